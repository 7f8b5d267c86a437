//! fleet-authz in a test: started through the library on 127.0.0.1 port 0
//! (the listeners are bound before `start` returns, so a client can connect
//! at once, with no wait), a connected client, and [`Verdict`] to read what
//! a Check answered.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Once};

use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use fleet_authz::{config::Config, server::RunningServer};
use serde_json::Value;
use tonic::transport::Channel;

/// The config line that puts both listeners on 127.0.0.1 port 0.
pub const LISTEN_ANY: &str = "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\"}\n";

/// The header a deny names its reason kinds in, comma-separated.
pub const REASON_HEADER: &str = "x-fleet-authz-reason";

/// Writes `policy.yaml` and `posture.yaml` into `dir` and returns the config
/// lines that name them.
pub fn write_files(dir: &Path, policy: &str, posture: &str) -> String {
    let policy_path = dir.join("policy.yaml");
    let posture_path = dir.join("posture.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    std::fs::write(&posture_path, posture).unwrap();
    format!(
        "posture_file: {}\npolicy_file: {}\n",
        posture_path.display(),
        policy_path.display()
    )
}

/// A config from a config file's text, as if read from `dir/config.yaml`.
pub fn config(yaml: &str, dir: &Path) -> Config {
    Config::from_yaml(yaml, &dir.join("config.yaml")).unwrap()
}

/// fleet-authz started through the library from a config file's text.
pub async fn start(yaml: &str, dir: &Path) -> RunningServer {
    fleet_authz::server::start(config(yaml, dir)).await.unwrap()
}

/// A gRPC channel to `addr`, connected.
pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An `Authorization` client connected to `server`'s gRPC listener.
pub async fn authz_client(server: &RunningServer) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(channel(server.grpc_addr()).await)
}

/// reqwest is built with `rustls-no-provider`: pick ring once per process.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// What a Check answered, read from its `CheckResponse`.
#[derive(Debug)]
pub enum Verdict {
    Allow(Allowed),
    Deny(Denied),
}

/// An allow: what Envoy is told to do to the request's headers.
#[derive(Debug)]
pub struct Allowed {
    /// Headers set on the request, by name.
    pub headers: HashMap<String, String>,
    /// Headers removed from the request.
    pub removed: Vec<String>,
}

/// A deny: the answer Envoy sends back instead of the request.
#[derive(Debug)]
pub struct Denied {
    /// The HTTP status.
    pub status: i32,
    /// The response headers, by name.
    pub headers: HashMap<String, String>,
    /// The body: JSON when its `content-type` says so, else a string.
    pub body: Value,
}

impl Denied {
    /// The value of header `name`, or "" when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// The reason kinds (`x-fleet-authz-reason`), comma-separated.
    pub fn reasons(&self) -> &str {
        self.header(REASON_HEADER)
    }
}

impl Verdict {
    /// Reads `response`; panics if it is neither an allow nor a deny.
    pub fn of(response: &CheckResponse) -> Self {
        let by_name =
            |headers: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
                headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect::<HashMap<_, _>>()
            };
        match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => Self::Allow(Allowed {
                headers: by_name(&ok.headers),
                removed: ok.headers_to_remove.clone(),
            }),
            Some(HttpResponse::DeniedResponse(d)) => {
                let headers = by_name(&d.headers);
                let json =
                    headers.get("content-type").map(String::as_str) == Some("application/json");
                let body = if json {
                    serde_json::from_str(&d.body)
                        .unwrap_or_else(|e| panic!("deny body is not JSON ({e}): {}", d.body))
                } else {
                    Value::String(d.body.clone())
                };
                Self::Deny(Denied {
                    status: d.status.as_ref().map_or(0, |s| s.code),
                    headers,
                    body,
                })
            }
            other => panic!("not an allow or a deny: {other:?}"),
        }
    }

    /// The allow in `response`, which must be one: gRPC status OK and an
    /// OK HTTP response.
    pub fn allow(response: &CheckResponse) -> Allowed {
        assert_eq!(
            response.status.as_ref().map(|s| s.code),
            Some(0),
            "{response:?}"
        );
        match Self::of(response) {
            Self::Allow(allowed) => allowed,
            Self::Deny(_) => panic!("expected an OK response, got {response:?}"),
        }
    }

    /// The deny in `response`, which must be one: gRPC status
    /// PERMISSION_DENIED and a denied HTTP response.
    pub fn deny(response: &CheckResponse) -> Denied {
        assert_eq!(
            response.status.as_ref().map(|s| s.code),
            Some(tonic::Code::PermissionDenied as i32)
        );
        match Self::of(response) {
            Self::Deny(denied) => denied,
            Self::Allow(_) => panic!("expected a denied response, got {response:?}"),
        }
    }

    /// The deny's reason kinds, or "" for an allow.
    pub fn reasons(&self) -> &str {
        match self {
            Self::Allow(_) => "",
            Self::Deny(denied) => denied.reasons(),
        }
    }
}

/// A port free now (a child process binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `fleet-authz serve --config <config>` as a child process of the real
/// binary, its stdout and stderr written to `log`.
pub fn spawn_serve(config: &Path, log: &Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_fleet-authz"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}
