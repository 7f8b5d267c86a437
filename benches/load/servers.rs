//! The two gRPC servers under load, each run in its own process:
//! - `fleet`: the real service, started through `fleet_authz::server::start`
//!   (same listeners, middleware and JSON decision log as `fleet-authz
//!   serve`), with 100,000 hosts put in its store after start;
//! - `fleet-synced`: the real service synced from a (fake) Fleet every 10 s,
//!   with a snapshot after each sync: the soak's server;
//! - `baseline`: the physical limit, a minimal tonic 0.14 `Authorization`
//!   server that answers OK to every Check without looking at it (tonic still
//!   decodes the request, as any tonic server must);
//! - `baseline-shaped`: the same server, but every answer is shaped as
//!   fleet-authz's allow (DESIGN §1.6): four identity headers to set, two to
//!   remove, and the dynamic metadata. Through Envoy it tells what applying
//!   that answer costs Envoy, apart from what fleet-authz itself spends.
//!
//! Each prints `LISTEN <addr>` on stderr once serving (`LISTEN unix:<path>`
//! with `--unix`, which serves gRPC on a Unix socket) and stops when stdin
//! closes.

use std::{net::SocketAddr, path::Path, time::SystemTime};

use anyhow::Context;
use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
        },
        service::auth::v3::{
            CheckRequest, CheckResponse, OkHttpResponse,
            authorization_server::{Authorization, AuthorizationServer},
            check_response::HttpResponse,
        },
    },
    google::{
        protobuf::{Struct, Value, value::Kind},
        rpc,
    },
};
use fleet_authz::{
    authz::convert::{DRY_RUN_HEADER, IDENTITY_HEADERS, REASON_HEADER},
    config::{Config, GrpcListen, TelemetryConfig},
    server::{self, RunningServer},
    telemetry,
};
use tokio::{io::AsyncReadExt, net::TcpListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

use crate::fixture;

/// Resolves when the parent closes our stdin (or it is not a pipe).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Where a server listens: a free TCP port, or (`unix`) a socket of its own
/// in the temp directory.
fn listen_at(unix: bool) -> GrpcListen {
    if unix {
        let name = format!("fleet-authz-load-{}.sock", std::process::id());
        GrpcListen::Unix(std::env::temp_dir().join(name))
    } else {
        GrpcListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// Serves fleet-authz with `hosts` hosts until stdin closes, with the
/// default telemetry (`log_format: auto`: JSON, as stdout is not a
/// terminal).
pub async fn serve_fleet(hosts: u64, devices: usize, unix: bool) -> anyhow::Result<()> {
    let _telemetry = telemetry::init(&TelemetryConfig::default());
    let dir = tempfile::tempdir()?;
    let posture = dir.path().join("posture.yaml");
    std::fs::write(&posture, "hosts: []\n")?;
    let source = format!("posture_file: {}\n", posture.display());
    let running = start_fleet(dir.path(), &source, unix).await?;
    let fps = fixture::fingerprints(&fixture::device_pems(devices)?)?;
    running
        .authorizer
        .store
        .replace_all(fixture::hosts(hosts, &fps), SystemTime::now());
    serve_until_stdin_closes(running).await
}

/// Serves fleet-authz synced from the Fleet at `fleet_url` every 10 s, with
/// a snapshot after each sync, its policy file at `<dir>/policy.yaml` (the
/// soak rewrites it to make it reload) and the token in `<dir>/fleet-token`.
pub async fn serve_fleet_synced(fleet_url: &str, dir: &Path) -> anyhow::Result<()> {
    let _telemetry = telemetry::init(&TelemetryConfig::default());
    let source = format!(
        "fleet:\n  url: {fleet_url}\n  token_file: {d}/fleet-token\n  certificate_query_id: 42\n  \
         sync_interval: 10s\n  page_size: 1000\nsnapshot: {{path: {d}/snapshot.pb}}\n",
        d = dir.display()
    );
    let running = start_fleet(dir, &source, false).await?;
    serve_until_stdin_closes(running).await
}

/// Starts fleet-authz with the load policy written to `<dir>/policy.yaml`
/// and `source` (the posture source's YAML) in its config.
async fn start_fleet(dir: &Path, source: &str, unix: bool) -> anyhow::Result<RunningServer> {
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, fixture::POLICY)?;
    let yaml = format!(
        "listen: {{grpc: \"{}\", http: \"127.0.0.1:0\"}}\n\
         {source}\
         policy_file: {}\n\
         identity: {{sources: [xfcc]}}\n\
         remediation_url: \"https://fleet.example.com/device/{{host_id}}\"\n",
        listen_at(unix),
        policy.display()
    );
    let config = Config::from_yaml(&yaml, "load.yaml".as_ref())?;
    server::start(config).await
}

/// Prints where it listens, then serves until the parent closes stdin.
async fn serve_until_stdin_closes(running: RunningServer) -> anyhow::Result<()> {
    eprintln!("METRICS {}", running.http_addr());
    eprintln!("LISTEN {}", running.grpc_listen());
    stdin_closed().await;
    running.shutdown().await;
    Ok(())
}

/// The baseline's handler: the same answer to every Check, built once.
#[derive(Debug, Default)]
struct AlwaysOk(CheckResponse);

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
}

/// OK, nothing else.
fn plain_ok() -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: rpc::Code::Ok as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// OK shaped as fleet-authz's allow for a fixture host (`fixture::hosts`).
fn shaped_ok() -> CheckResponse {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let set = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    let values = [
        "4711",
        "5f0c7c4e-2d0b-4c4e-9a58-000000004711",
        "host-4711",
        "Workstations",
    ];
    let metadata = [
        ("route", "default"),
        ("decision", "allow"),
        ("host_id", "4711"),
    ];
    CheckResponse {
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: IDENTITY_HEADERS
                .iter()
                .zip(values)
                .map(|(k, v)| set(k, v))
                .collect(),
            headers_to_remove: vec![DRY_RUN_HEADER.to_owned(), REASON_HEADER.to_owned()],
            ..Default::default()
        })),
        dynamic_metadata: Some(Struct {
            fields: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), string(v)))
                .collect(),
        }),
        ..plain_ok()
    }
}

/// Serves the baseline (`shaped`: with fleet-authz's allow shape) until stdin
/// closes.
pub async fn serve_baseline(shaped: bool, unix: bool) -> anyhow::Result<()> {
    let answer = if shaped { shaped_ok() } else { plain_ok() };
    let server =
        tonic::transport::Server::builder().add_service(AuthorizationServer::new(AlwaysOk(answer)));
    match listen_at(unix) {
        GrpcListen::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await?;
            eprintln!("LISTEN {}", listener.local_addr()?);
            server
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stdin_closed(),
                )
                .await
        }
        GrpcListen::Unix(path) => {
            let listener = fleet_authz::server::listen::bind_unix(&path)?;
            eprintln!("LISTEN unix:{}", path.display());
            let served = server
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stdin_closed())
                .await;
            let _ = std::fs::remove_file(&path);
            served
        }
    }
    .context("baseline server failed")
}
