//! The shipped `envoy.yaml` in a real Envoy, with a stub ext_authz server
//! that allows everything and records each Check request. These tests pin
//! what Envoy sends to fleet-authz and to the app (mTLS, the peer
//! certificate, XFCC, context extensions, the public route, failing closed),
//! independently of fleet-authz's own decisions (see `envoy_e2e.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::{collections::HashMap, net::SocketAddr, process::Command};

use common::{
    certs::TestPki,
    echo::Echo,
    envoy::{Envoy, EnvoyOptions},
    tools::envoy_bin,
};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use serde_json::Value;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;

/// Sends each CheckRequest to the test, then allows the request (adding
/// `x-stub-authz: allowed`) or, when `fail`, answers with a gRPC error as a
/// broken authorization server would.
struct StubAuthz {
    checks: mpsc::UnboundedSender<CheckRequest>,
    fail: bool,
}

#[tonic::async_trait]
impl Authorization for StubAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let _ = self.checks.send(request.into_inner());
        if self.fail {
            return Err(tonic::Status::unavailable("stub: posture not loaded"));
        }
        let header = HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-stub-authz".into(),
                value: "allowed".into(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
            ..Default::default()
        };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![header],
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

struct Stub {
    addr: SocketAddr,
    checks: mpsc::UnboundedReceiver<CheckRequest>,
    task: JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_stub() -> Stub {
    start_stub_with(false).await
}

async fn start_stub_with(fail: bool) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, checks) = mpsc::unbounded_channel();
    let stub = StubAuthz { checks: tx, fail };
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(stub))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    Stub { addr, checks, task }
}

/// An address where nothing listens: bound, then released.
async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// PEM with `\n` line ends, as Envoy (BoringSSL) writes it.
fn unix_pem(pem: &str) -> String {
    pem.replace("\r\n", "\n")
}

fn url_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

/// The URL-decoded `Cert="…"` value of an XFCC header with one element.
fn xfcc_cert(xfcc: &str) -> String {
    let start = xfcc.find("Cert=\"").unwrap() + "Cert=\"".len();
    let len = xfcc[start..].find('"').unwrap();
    url_decode(&xfcc[start..start + len])
}

fn http_headers(check: &CheckRequest) -> &HashMap<String, String> {
    &check
        .attributes
        .as_ref()
        .unwrap()
        .request
        .as_ref()
        .unwrap()
        .http
        .as_ref()
        .unwrap()
        .headers
}

fn context_extensions(check: &CheckRequest) -> &HashMap<String, String> {
    &check.attributes.as_ref().unwrap().context_extensions
}

fn peer_certificate(check: &CheckRequest) -> &str {
    &check
        .attributes
        .as_ref()
        .unwrap()
        .source
        .as_ref()
        .unwrap()
        .certificate
}

async fn get_json(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn shipped_envoy_yaml_validates_verbatim() {
    // Run from a directory laid out like the repository, so the relative
    // deploy/demo/certs/ paths in the file resolve exactly as shipped.
    let dir = tempfile::tempdir().unwrap();
    TestPki::new().write_envoy_files(&dir.path().join("deploy/demo/certs"));
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy.yaml");
    std::fs::copy(&shipped, dir.path().join("envoy.yaml")).unwrap();
    validate_envoy_yaml_in(dir.path());
}

#[test]
fn shipped_envoy_yaml_validates_from_the_repository_root_with_the_demo_certificates() {
    // The README's "Envoy + curl" walk-through runs exactly this file from
    // the repository root against deploy/demo/certs/.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    validate_envoy_yaml_in(root);
}

/// `envoy --mode validate -c envoy.yaml` run in `dir` accepts the file.
fn validate_envoy_yaml_in(dir: &std::path::Path) {
    let output = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "-c",
            "envoy.yaml",
            "--disable-hot-restart",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "envoy rejected envoy.yaml:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("configuration 'envoy.yaml' OK"), "{stdout}");
}

#[tokio::test]
async fn device_certificate_reaches_authz_and_app() {
    let pki = TestPki::new();
    let device = pki.device("anna-macbook");
    let mut stub = start_stub().await;
    let echo = Echo::start().await;
    let envoy = Envoy::start(&pki, EnvoyOptions::new(stub.addr, echo.addr)).await;
    let client = envoy.client(&device);

    let forged = "Hash=00;Cert=\"forged\";Subject=\"CN=mallory\"";
    let (status, upstream) = get_json(
        &client,
        &envoy.url("/"),
        &[("x-forwarded-client-cert", forged), ("accept", "text/html")],
    )
    .await;
    assert_eq!(status, 200, "{upstream}");
    assert_eq!(upstream["x-stub-authz"], "allowed");

    // SANITIZE_SET: the app sees Envoy's XFCC for the verified peer only.
    let xfcc = upstream["x-forwarded-client-cert"].as_str().unwrap();
    assert!(
        !xfcc.contains("forged") && !xfcc.contains("mallory"),
        "{xfcc}"
    );
    assert!(xfcc.contains("Subject=\"CN=anna-macbook\""), "{xfcc}");
    assert_eq!(xfcc_cert(xfcc), unix_pem(&device.cert_pem));

    let check = stub.checks.recv().await.unwrap();
    // include_peer_certificate: the URL-encoded PEM of the client certificate.
    assert_eq!(
        url_decode(peer_certificate(&check)),
        unix_pem(&device.cert_pem)
    );
    // Headers reach the Check request after XFCC was rewritten, with accept.
    let headers = http_headers(&check);
    assert_eq!(headers["x-forwarded-client-cert"], xfcc);
    assert_eq!(headers["accept"], "text/html");
    assert!(context_extensions(&check).is_empty());
}

#[tokio::test]
async fn without_peer_certificate_xfcc_still_carries_the_certificate() {
    let pki = TestPki::new();
    let device = pki.device("istio-device");
    let mut stub = start_stub().await;
    let echo = Echo::start().await;
    let options = EnvoyOptions {
        include_peer_certificate: false,
        ..EnvoyOptions::new(stub.addr, echo.addr)
    };
    let envoy = Envoy::start(&pki, options).await;

    let (status, _) = get_json(&envoy.client(&device), &envoy.url("/"), &[]).await;
    assert_eq!(status, 200);
    let check = stub.checks.recv().await.unwrap();
    assert_eq!(peer_certificate(&check), "");
    let xfcc = &http_headers(&check)["x-forwarded-client-cert"];
    assert_eq!(xfcc_cert(xfcc), unix_pem(&device.cert_pem));
}

#[tokio::test]
async fn payroll_route_sends_its_context_extensions() {
    let pki = TestPki::new();
    let device = pki.device("anna-macbook");
    let mut stub = start_stub().await;
    let echo = Echo::start().await;
    let envoy = Envoy::start(&pki, EnvoyOptions::new(stub.addr, echo.addr)).await;
    let client = envoy.client(&device);

    for (path, expected) in [
        ("/payroll", Some("payroll")),
        ("/payroll/2026/11", Some("payroll")),
        ("/payrollx", None),
        ("/", None),
    ] {
        let (status, _) = get_json(&client, &envoy.url(path), &[]).await;
        assert_eq!(status, 200, "{path}");
        let check = stub.checks.recv().await.unwrap();
        let app = context_extensions(&check).get("app").map(String::as_str);
        assert_eq!(app, expected, "{path}");
    }
}

#[tokio::test]
async fn authz_down_fails_closed_except_on_the_public_route() {
    let pki = TestPki::new();
    let device = pki.device("anna-macbook");
    let echo = Echo::start().await;
    let envoy = Envoy::start(&pki, EnvoyOptions::new(closed_port().await, echo.addr)).await;
    let client = envoy.client(&device);

    for path in ["/", "/payroll", "/publicity"] {
        let response = client.get(envoy.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 503, "{path}");
        assert!(response.headers().get("x-fleet-authz-reason").is_none());
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("x-forwarded-client-cert"),
            "upstream reached: {body}"
        );
    }

    // ext_authz is disabled on /public: the app answers, and identity
    // headers a client made up are removed, since nothing overwrites them.
    let (status, upstream) = get_json(
        &client,
        &envoy.url("/public/status"),
        &[("x-fleet-host-id", "999"), ("x-fleet-team", "Admins")],
    )
    .await;
    assert_eq!(status, 200, "{upstream}");
    assert!(upstream.get("x-fleet-host-id").is_none(), "{upstream}");
    assert!(upstream.get("x-fleet-team").is_none(), "{upstream}");
    assert!(upstream["x-forwarded-client-cert"].is_string());
}

#[tokio::test]
async fn authz_grpc_error_fails_closed() {
    let pki = TestPki::new();
    let device = pki.device("anna-macbook");
    let mut stub = start_stub_with(true).await;
    let echo = Echo::start().await;
    let envoy = Envoy::start(&pki, EnvoyOptions::new(stub.addr, echo.addr)).await;

    let response = envoy
        .client(&device)
        .get(envoy.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("x-forwarded-client-cert"),
        "upstream reached: {body}"
    );
    // The Check did reach the stub: the 503 is its error, not a connect failure.
    assert!(stub.checks.recv().await.is_some());
}

#[tokio::test]
async fn client_without_certificate_is_refused_at_the_handshake() {
    let pki = TestPki::new();
    let mut stub = start_stub().await;
    let echo = Echo::start().await;
    let envoy = Envoy::start(&pki, EnvoyOptions::new(stub.addr, echo.addr)).await;

    let error = envoy
        .client_without_certificate()
        .get(envoy.url("/public"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");
    assert!(stub.checks.try_recv().is_err(), "a Check was sent");

    // A certificate from another CA is refused the same way.
    let stranger = TestPki::new().device("stranger");
    let error = envoy
        .client(&stranger)
        .get(envoy.url("/public"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");
    assert!(stub.checks.try_recv().is_err(), "a Check was sent");
}
