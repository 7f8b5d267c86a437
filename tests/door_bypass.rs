//! The person at the door, end to end (DESIGN.md §9): devices with real
//! certificates → a real Envoy running the shipped `envoy.yaml` → fleet-authz
//! (posture from a file) → an echo app. A device failing only a non-critical
//! policy takes a self-service bypass through Envoy and reaches the app until
//! the bypass runs out; everything that must be refused is refused with the
//! status §9 names and nothing stored; while a failing policy is inside its
//! `grace`, the app is told with `x-fleet-authz-warning`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

#[path = "door_bypass/harness.rs"]
mod harness;

use std::time::{Duration, Instant, SystemTime};

use common::certs::Leaf;
use harness::{BYPASS_SECS, Door, Reply, SCREEN_LOCK_FIX, form_body};
use serde_json::Value;

/// Polls Checks through Envoy until `device` is denied on `/`, or panics at
/// `deadline`.
async fn denied_again_by(door: &Door, device: &Leaf, deadline: Instant) -> Reply {
    loop {
        let reply = door.get(device, "/", "application/json").await;
        if reply.status == 403 {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "still allowed after the bypass expired: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_minor_failure_is_bypassed_through_envoy_until_it_runs_out() {
    let door = Door::start().await;
    let cleo = &door.cleo;

    // The deny says what failed, what to do, and offers the bypass.
    let page = door.get(cleo, "/reports", "application/json").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert_eq!(
        page.header("x-fleet-authz-reason"),
        Some("failing_any_policy")
    );
    assert_eq!(page.body["title"], "localhost");
    assert_eq!(page.body["reasons"][0]["resolution"], SCREEN_LOCK_FIX);
    assert_eq!(page.body["next_steps"].as_array().unwrap().len(), 4);
    assert_eq!(page.body["bypass"]["duration"], "3s");
    assert_eq!(page.body["bypass"]["remaining"], 2);
    assert_eq!(page.body["support"]["text"], "IT help desk");
    let token = page.body["bypass"]["token"].as_str().unwrap().to_owned();

    // Taken through Envoy with Cleo's own certificate: 303 back to the page.
    let form = [
        ("token", token.as_str()),
        ("route", "default"),
        ("reason", "board demo in ten minutes"),
        ("return_to", "/reports"),
    ];
    let taken = door.post(cleo, Some(&door.origin()), &form).await;
    assert_eq!(taken.status, 303, "{}", taken.body);
    assert_eq!(taken.header("location"), Some("/reports"));

    // Cleo reaches the app, which is told until when.
    let app = door.get(cleo, "/reports", "application/json").await;
    assert_eq!(app.status, 200, "{}", app.body);
    assert_eq!(app.body["x-fleet-host-id"], "3");
    let expiry = app.body["x-fleet-authz-bypass"]
        .as_str()
        .unwrap()
        .to_owned();
    let expires_at = humantime::parse_rfc3339(&expiry).unwrap();
    let left = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(left <= Duration::from_secs(BYPASS_SECS), "{expiry}");

    // A grant like break-glass: listed by the admin API, logged and counted.
    let grants = door.grants().await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["kind"], "bypass");
    assert_eq!(grants[0]["route"], "default");
    assert_eq!(grants[0]["host_id"], 3);
    assert_eq!(grants[0]["reason"], "board demo in ten minutes");
    let metrics = door.metrics().await;
    assert!(
        metrics.contains(r#"fleet_authz_bypass_requests_total{result="granted"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"fleet_authz_decisions_total{decision="allow",reason="bypass",route="default"} 1"#
        ),
        "{metrics}"
    );
    let line = &door.envoy.access_log_lines("GET /reports", 2).await[1];
    assert!(
        line.contains(r#""reasons":"failing_any_policy,bypass""#),
        "{line}"
    );

    // The same page's token again: spent.
    let replay = door.post(cleo, Some(&door.origin()), &form).await;
    assert_eq!(replay.status, 403, "{}", replay.body);

    // When the bypass runs out Cleo is denied again, and may take the
    // second of her two for the day; after that none is offered.
    denied_again_by(
        &door,
        cleo,
        Instant::now() + Duration::from_secs(BYPASS_SECS + 10),
    )
    .await;
    let second = door.page_token(cleo).await;
    let form2 = [
        ("token", second.as_str()),
        ("route", "default"),
        ("reason", "still demoing"),
    ];
    assert_eq!(
        door.post(cleo, Some(&door.origin()), &form2).await.status,
        303
    );
    assert_eq!(door.get(cleo, "/", "application/json").await.status, 200);
    let out = denied_again_by(
        &door,
        cleo,
        Instant::now() + Duration::from_secs(BYPASS_SECS + 10),
    )
    .await;
    assert_eq!(out.body["bypass"]["remaining"], 0, "{}", out.body);
    assert!(out.body["bypass"]["token"].is_null(), "{}", out.body);
    let html = door.get(cleo, "/", "text/html").await;
    let html = html.body.as_str().unwrap();
    assert!(html.contains("You have used the 2 bypasses"), "{html}");
    assert!(!html.contains("name=\"token\""), "{html}");
    // A token minted now (as a page would) still meets the daily limit.
    let minted = door
        .key
        .issue(&cleo.fingerprint, "default", SystemTime::now());
    let form3 = [
        ("token", minted.as_str()),
        ("route", "default"),
        ("reason", "third"),
    ];
    assert_eq!(
        door.post(cleo, Some(&door.origin()), &form3).await.status,
        403
    );
    assert_eq!(door.get(cleo, "/", "application/json").await.status, 403);
}

#[tokio::test]
async fn critical_failures_forged_identities_and_cross_site_posts_store_nothing() {
    let door = Door::start().await;
    let (ben, cleo, eve) = (&door.ben, &door.cleo, &door.eve);
    let origin = door.origin();
    let now = SystemTime::now();

    // A critical failure is never offered a bypass, and a validly signed
    // token for Ben does not make it bypassable.
    let page = door.get(ben, "/", "application/json").await;
    assert_eq!(page.status, 403);
    assert!(page.body.get("bypass").is_none(), "{}", page.body);
    let bens = door.key.issue(&ben.fingerprint, "default", now);
    let refused = door
        .post(
            ben,
            Some(&origin),
            &[("token", &bens), ("route", "default"), ("reason", "please")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);

    // The form cannot name the device: Cleo's token is Cleo's only, and a
    // host id in the form is ignored.
    let cleos = door.page_token(cleo).await;
    let forged = [
        ("token", cleos.as_str()),
        ("route", "default"),
        ("reason", "x"),
        ("host_id", "3"),
    ];
    assert_eq!(door.post(ben, Some(&origin), &forged).await.status, 403);
    let named = [
        ("token", bens.as_str()),
        ("route", "default"),
        ("reason", "x"),
        ("host_id", "3"),
    ];
    assert_eq!(door.post(ben, Some(&origin), &named).await.status, 403);

    // Cross-site: a foreign Origin, no Origin, Sec-Fetch-Site cross-site.
    let form = [
        ("token", cleos.as_str()),
        ("route", "default"),
        ("reason", "x"),
    ];
    assert_eq!(
        door.post(cleo, Some("https://evil.example"), &form)
            .await
            .status,
        403
    );
    assert_eq!(door.post(cleo, None, &form).await.status, 403);
    let cross_site = door
        .client(cleo)
        .post(door.envoy.url("/.fleet-authz/bypass"))
        .header("origin", &origin)
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&form))
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);

    // An expired token, one for another route, a missing reason.
    let old = door
        .key
        .issue(&eve.fingerprint, "default", now - Duration::from_secs(601));
    let expired = [
        ("token", old.as_str()),
        ("route", "default"),
        ("reason", "x"),
    ];
    assert_eq!(door.post(eve, Some(&origin), &expired).await.status, 403);
    let eves = door.page_token(eve).await;
    let wiki = [("token", eves.as_str()), ("route", "wiki"), ("reason", "x")];
    assert_eq!(door.post(eve, Some(&origin), &wiki).await.status, 403);
    let blank = [
        ("token", eves.as_str()),
        ("route", "default"),
        ("reason", "  "),
    ];
    assert_eq!(door.post(eve, Some(&origin), &blank).await.status, 400);

    // Nothing was stored, and every device is still denied.
    assert_eq!(door.grants().await, Vec::<Value>::new());
    for device in [ben, cleo, eve] {
        assert_eq!(door.get(device, "/", "application/json").await.status, 403);
    }
    let metrics = door.metrics().await;
    for (result, n) in [
        ("not_eligible", 2),
        ("bad_token", 3),
        ("cross_origin", 3),
        ("missing_reason", 1),
    ] {
        let series = format!("fleet_authz_bypass_requests_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }
}

#[tokio::test]
async fn inside_grace_the_app_is_warned_and_explain_says_so() {
    let door = Door::start().await;
    let reply = door.get(&door.cleo, "/wiki/home", "application/json").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let warning = reply.body["x-fleet-authz-warning"].as_str().unwrap();
    let (id, deadline) = warning.split_once(";deadline=").unwrap();
    assert_eq!(id, "34");
    let deadline = humantime::parse_rfc3339(deadline).unwrap();
    let in_72h = SystemTime::now() + Duration::from_secs(72 * 3600);
    assert!(
        deadline <= in_72h && deadline + Duration::from_secs(60) > in_72h,
        "{warning}"
    );
    let line = &door.envoy.access_log_lines("GET /wiki/home", 1).await[0];
    assert!(
        line.contains(&format!(r#""warnings":"{warning}""#)),
        "{line}"
    );
    // A client cannot send its own warning or bypass header to the app.
    let forged = door
        .client(&door.cleo)
        .get(door.envoy.url("/"))
        .header("x-fleet-authz-bypass", "2099-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let in_grace = door
        .client(&door.cleo)
        .get(door.envoy.url("/wiki/x"))
        .header("x-fleet-authz-bypass", "2099-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    let echoed: Value = in_grace.json().await.unwrap();
    assert!(echoed.get("x-fleet-authz-bypass").is_none(), "{echoed}");

    let addr = format!("http://{}", door.server.http_addr());
    let sha1 = door.cleo.fingerprint.to_hex();
    let (allowed, text) =
        fleet_authz::cli::explain(&addr, None, &sha1, &[], "localhost", "/wiki/home")
            .await
            .unwrap();
    assert!(allowed, "{text}");
    assert!(
        text.contains("warning: policy 34 is failing and denies from"),
        "{text}"
    );
}
