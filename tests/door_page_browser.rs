//! The deny page in a real browser: headless Chromium over WebDriver. A
//! small server hands the browser what fleet-authz answers a real Check for
//! a device failing two non-critical policies (HTML, as Envoy would relay
//! it); the tests read the page as a person would. Screenshots at 1280 px and
//! 320 px are written under `<target>/deny-page/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use common::{
    browser::{Chromedriver, axe_violations},
    certs::TestPki,
    tools::target_dir,
};
use envoy_types::pb::envoy::service::auth::v3::{
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use fantoccini::{Client, Locator};
use fleet_authz::{
    authz::request::{build_check_request, request_headers},
    config::Config,
    server::RunningServer,
};
use serde_json::Value;
use tempfile::TempDir;

const SCREEN_LOCK: &str = "Screen lock after 5 minutes";
const SCREEN_LOCK_FIX: &str = "Lock the screen when idle:\n1. Open System Settings > Lock Screen.\n2. Set \"Require password after screen saver begins\" to 5 minutes or less.\n3. Close System Settings.";
const UPDATES: &str = "macOS updates installed";
const UPDATES_FIX: &str =
    "Install pending updates from System Settings > General > Software Update, then restart.";
const DEVICE: &str = "Cleo's MacBook <Pro>";

/// fleet-authz and the server that shows its deny page to the browser.
struct Page {
    /// `http://127.0.0.1:<port>`.
    url: String,
    /// Page loads so far.
    loads: Arc<AtomicU64>,
    _server: RunningServer,
    _dir: TempDir,
}

#[derive(Clone)]
struct Relay {
    grpc: String,
    pem: String,
    loads: Arc<AtomicU64>,
}

impl Page {
    async fn start() -> Self {
        let pki = TestPki::new();
        let cleo = pki.device("cleo");
        let dir = tempfile::tempdir().unwrap();
        let server = start_fleet_authz(&dir, &cleo.fingerprint.to_hex()).await;
        let loads = Arc::new(AtomicU64::new(0));
        let relay = Relay {
            grpc: format!("http://{}", server.grpc_addr()),
            pem: cleo.cert_pem.clone(),
            loads: Arc::clone(&loads),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(relay_page).with_state(relay);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url,
            loads,
            _server: server,
            _dir: dir,
        }
    }
}

/// Sends the Check Envoy would send for this request (route `payroll`, as
/// Envoy's context_extensions say) and answers what fleet-authz said.
async fn relay_page(State(relay): State<Relay>, uri: Uri) -> Response {
    // The browser asks for a favicon on its own: not a page load.
    if uri.path() == "/favicon.ico" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let n = relay.loads.fetch_add(1, Ordering::SeqCst) + 1;
    let context = [("app".to_owned(), "payroll".to_owned())];
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = build_check_request(&relay.pem, &context, "payroll.example.com", path, false);
    let headers = request_headers(&mut request);
    headers.insert(
        "accept".into(),
        "text/html,application/xhtml+xml,*/*;q=0.8".into(),
    );
    let http = request
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap();
    http.http.as_mut().unwrap().id = format!("page-load-{n}");
    let mut client = AuthorizationClient::connect(relay.grpc.clone())
        .await
        .unwrap();
    let answer = client.check(request).await.unwrap().into_inner();
    let Some(HttpResponse::DeniedResponse(denied)) = answer.http_response else {
        return (StatusCode::OK, "allowed").into_response();
    };
    let status = StatusCode::from_u16(denied.status.map_or(403, |s| s.code as u16)).unwrap();
    let content_type = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "content-type")
        .map(|h| h.value.clone())
        .unwrap();
    (status, [(header::CONTENT_TYPE, content_type)], denied.body).into_response()
}

async fn start_fleet_authz(dir: &TempDir, sha1: &str) -> RunningServer {
    let posture = format!(
        "policies:\n\
  - {{id: 34, name: {SCREEN_LOCK}, critical: false, resolution: {SCREEN_LOCK_FIX:?}}}\n\
  - {{id: 56, name: {UPDATES}, critical: false, resolution: {UPDATES_FIX:?}}}\n\
hosts:\n\
  - {{id: 3, display_name: {DEVICE:?}, last_seen_ago: 7m, policies: {{34: fail, 56: fail}}, fingerprints: [{sha1}]}}\n"
    );
    let policy = r#"
version: 1
defaults:
  deny: {failing_critical_policy: true}
  deny_page: {support_text: "IT help desk, ext. 4242", support_url: "https://help.example.com/device"}
routes:
  - name: payroll
    title: Payroll
    match: {context: {app: payroll}}
    deny: {failing_any_policy: true}
    bypass: {duration: 1h, max_per_day: 2}
"#;
    std::fs::write(dir.path().join("posture.yaml"), posture).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    let config = format!(
        "listen: {{grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\"}}\n\
posture_file: {d}/posture.yaml\npolicy_file: {d}/policy.yaml\n",
        d = dir.path().display()
    );
    let config = Config::from_yaml(&config, "page.yaml".as_ref()).unwrap();
    fleet_authz::server::start(config).await.unwrap()
}

fn screenshot_path(name: &str) -> std::path::PathBuf {
    let dir = target_dir().join("deny-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Texts of every element matching `css` that the browser displays.
async fn visible_texts(client: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for element in client.find_all(Locator::Css(css)).await.unwrap() {
        assert!(element.is_displayed().await.unwrap(), "{css} hidden");
        out.push(element.text().await.unwrap());
    }
    out
}

/// Violations axe rates serious or critical.
async fn serious_violations(client: &Client) -> Vec<Value> {
    axe_violations(client)
        .await
        .into_iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect()
}

#[tokio::test]
async fn every_failing_check_and_its_fix_are_shown_and_try_again_reloads() {
    // The posture says "last seen 7 minutes ago" as of its loading, after
    // this instant: a slow machine may show a later minute, never another.
    let loaded_after = Instant::now();
    let page = Page::start().await;
    let driver = Chromedriver::start();
    let client = driver.session(&[], None).await;
    client
        .goto(&format!("{}/payroll/q3", page.url))
        .await
        .unwrap();

    assert_eq!(client.title().await.unwrap(), "Access to Payroll blocked");
    assert_eq!(text(&client, "#device").await, DEVICE);
    let last_seen = text(&client, "#last-seen").await;
    let later = loaded_after.elapsed().as_secs() / 60;
    assert!(
        (7..=7 + later).any(|m| last_seen == format!("{m} minutes ago")),
        "{last_seen:?}, {later} min after the posture loaded"
    );
    assert_eq!(
        visible_texts(&client, ".check h3").await,
        [SCREEN_LOCK, UPDATES]
    );
    // Fleet's numbered steps are a list, its other lines paragraphs.
    assert_eq!(
        visible_texts(&client, ".check:nth-child(1) .fix ol li").await,
        [
            "Open System Settings > Lock Screen.",
            "Set \"Require password after screen saver begins\" to 5 minutes or less.",
            "Close System Settings.",
        ]
    );
    assert_eq!(
        visible_texts(&client, ".check:nth-child(1) .fix p").await,
        ["Lock the screen when idle:"]
    );
    assert_eq!(
        visible_texts(&client, ".check:nth-child(2) .fix p").await,
        [UPDATES_FIX]
    );
    let steps = visible_texts(&client, ".steps li").await;
    assert!(
        steps[0].contains("Fleet Desktop") && steps[0].contains("My device"),
        "{steps:?}"
    );
    assert!(steps[2].contains("Refetch"), "{steps:?}");
    assert!(
        text(&client, "form button")
            .await
            .starts_with("Continue for 1 hour")
    );
    assert!(
        text(&client, "#support")
            .await
            .contains("IT help desk, ext. 4242")
    );
    assert_eq!(text(&client, "#request-id").await, "page-load-1");
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshot_path("deny-page-1280.png"), png).unwrap();

    // "Try again" loads the page again: a new Check, a new request id.
    client
        .find(Locator::Id("try-again"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while text(&client, "#request-id").await != "page-load-2" {
        assert!(
            Instant::now() < deadline,
            "Try again did not reload the page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(page.loads.load(Ordering::SeqCst), 2);
    client.close().await.unwrap();
}

#[tokio::test]
async fn the_page_fits_320_px_and_axe_finds_no_serious_fault_light_or_dark() {
    let page = Page::start().await;
    let driver = Chromedriver::start();
    let url = format!("{}/payroll", page.url);

    let narrow = driver.session(&[], Some(320)).await;
    narrow.goto(&url).await.unwrap();
    let widths = narrow
        .execute(
            "const e = document.documentElement; return [e.clientWidth, e.scrollWidth, document.body.scrollWidth];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(widths[0], 320, "{widths}");
    assert!(
        widths[1].as_u64() <= Some(320) && widths[2].as_u64() <= Some(320),
        "horizontal scroll at 320 px: {widths}"
    );
    assert_eq!(
        visible_texts(&narrow, ".check h3").await,
        [SCREEN_LOCK, UPDATES]
    );
    let png = narrow.screenshot().await.unwrap();
    std::fs::write(screenshot_path("deny-page-320.png"), png).unwrap();
    assert_eq!(serious_violations(&narrow).await, Vec::<Value>::new());
    narrow.close().await.unwrap();

    for (scheme, args) in [("light", &[][..]), ("dark", &["--force-dark-mode"][..])] {
        let client = driver.session(args, None).await;
        client.goto(&url).await.unwrap();
        let dark = client
            .execute(
                "return matchMedia('(prefers-color-scheme: dark)').matches;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(dark, Value::Bool(scheme == "dark"));
        assert_eq!(
            serious_violations(&client).await,
            Vec::<Value>::new(),
            "{scheme}"
        );
        if scheme == "dark" {
            let png = client.screenshot().await.unwrap();
            std::fs::write(screenshot_path("deny-page-1280-dark.png"), png).unwrap();
        }
        client.close().await.unwrap();
    }
}
