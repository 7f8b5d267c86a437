//! A real Envoy for tests, configured from the repository's own `envoy.yaml`.
//!
//! The shipped file is loaded and only what a test must change is rewritten:
//! listen addresses (port 0), certificate paths (a test PKI), and the
//! endpoints of the `fleet_authz` and `app` clusters. Everything else (mTLS,
//! XFCC handling, the ext_authz filter, per-route settings) runs as shipped,
//! so these tests prove `envoy.yaml` works.
//!
//! Envoy itself is found or installed by [`super::tools::envoy_bin`]; a
//! missing Envoy fails the test: it is never skipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fleet_authz::config::GrpcListen;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::certs::{Leaf, TestPki};
use super::server::install_crypto_provider;
use super::tools::{envoy_bin, wait_for_envoy};

/// How long Envoy may take to come up before the test fails.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// What a test changes in the shipped `envoy.yaml`.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// The ext_authz gRPC server (the `fleet_authz` cluster's endpoint): a
    /// TCP address, or a Unix socket (an Envoy `pipe` address).
    pub authz: GrpcListen,
    /// The upstream application (the `app` cluster's endpoint).
    pub app: SocketAddr,
    /// `include_peer_certificate` of the ext_authz filter. `false` mimics
    /// Istio, which sends the certificate only in `x-forwarded-client-cert`.
    pub include_peer_certificate: bool,
    /// fleet-authz's HTTP listener (the `fleet_authz_http` cluster, which
    /// serves `/.fleet-authz/`); left as shipped when `None`.
    pub http: Option<SocketAddr>,
}

impl EnvoyOptions {
    /// The shipped settings, pointed at `authz` and `app`.
    pub fn new(authz: SocketAddr, app: SocketAddr) -> Self {
        Self {
            authz: GrpcListen::Tcp(authz),
            app,
            include_peer_certificate: true,
            http: None,
        }
    }
}

/// A running Envoy process; killed when dropped. If the test is panicking,
/// Envoy's log is printed first.
pub struct Envoy {
    /// The mTLS listener (127.0.0.1 and the port Envoy bound).
    pub addr: SocketAddr,
    /// The admin interface.
    pub admin: SocketAddr,
    ca_pem: String,
    child: Child,
    dir: TempDir,
}

impl Envoy {
    /// Starts Envoy with the test PKI's server certificate and CA and waits
    /// until its listener is bound.
    pub async fn start(pki: &TestPki, options: EnvoyOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = pki.write_envoy_files(&dir.path().join("certs"));
        let config = derive_config(&root_config(), &certs, &options);
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let admin_path = dir.path().join("admin-address");
        let out = std::fs::File::create(dir.path().join("envoy.out")).unwrap();
        let child = Command::new(envoy_bin())
            .arg("--config-path")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            .args([
                "--log-level",
                "info",
                "--component-log-level",
                "ext_authz:debug",
            ])
            .args(["--concurrency", "1"])
            // The access log reaches stdout within 20 ms (Envoy's default is
            // every 10 s), so a test can read a request's line.
            .args(["--file-flush-interval-msec", "20"])
            // Without hot restart Envoy creates no shared memory or domain
            // socket, so any number of Envoys can run at once with no base id
            // to keep unique.
            .arg("--disable-hot-restart")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", envoy_bin().display()));
        let mut envoy = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_pem: pki.ca_pem.clone(),
            child,
            dir,
        };
        envoy.wait_ready(&admin_path).await;
        envoy
    }

    /// `https://localhost:<port><path>`; clients from [`Envoy::client`]
    /// resolve `localhost` to the listener.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// An HTTPS client that presents `device`'s certificate and trusts only
    /// the test CA.
    pub fn client(&self, device: &Leaf) -> reqwest::Client {
        let identity = reqwest::Identity::from_pem(device.identity_pem().as_bytes()).unwrap();
        self.client_builder().identity(identity).build().unwrap()
    }

    /// An HTTPS client that presents no client certificate.
    pub fn client_without_certificate(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([ca])
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(10))
    }

    /// Envoy's log so far (its own log file, then stdout/stderr, which holds
    /// the access log).
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        format!(
            "--- envoy.log ---\n{}\n--- envoy stdout/stderr ---\n{}",
            read("envoy.log").unwrap_or_default(),
            read("envoy.out").unwrap_or_default()
        )
    }

    /// The access log's lines for `request` (`"GET /path"`), once there are
    /// `count` of them. Envoy flushes its access log on a timer, so this
    /// polls; it panics with Envoy's log after 10 s.
    pub async fn access_log_lines(&self, request: &str, count: usize) -> Vec<String> {
        let needle = format!("\"{request} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = std::fs::read_to_string(self.dir.path().join("envoy.out")).unwrap();
            let lines: Vec<String> = out
                .lines()
                .filter(|l| l.contains(&needle))
                .map(str::to_owned)
                .collect();
            if lines.len() >= count {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "no {count} access log lines for {request} after 10s\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until Envoy is ready and its `https` listener has a port (see
    /// [`wait_for_envoy`]); panics with Envoy's log if it does not come up.
    async fn wait_ready(&mut self, admin_path: &Path) {
        match wait_for_envoy(&mut self.child, admin_path, "https", STARTUP_LIMIT).await {
            Ok((admin, port)) => {
                self.admin = admin;
                self.addr = SocketAddr::from(([127, 0, 0, 1], port));
            }
            Err(e) => panic!("{e}\n{}", self.log()),
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

/// The repository's `envoy.yaml` as JSON.
pub fn root_config() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// The shipped config with test addresses, certificates and endpoints.
/// Panics if the shipped file lacks what the tests rely on (a listener named
/// `https`, clusters `fleet_authz` and `app`, the demo certificate paths).
pub fn derive_config(root: &Value, certs: &Path, options: &EnvoyOptions) -> Value {
    let mut config = root.clone();
    let loopback_any = SocketAddr::from(([127, 0, 0, 1], 0));
    set_socket_address(&mut config["admin"]["address"], loopback_any);
    let listeners = config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap();
    assert!(
        listeners.iter().any(|l| l["name"] == "https"),
        "envoy.yaml has no listener named https"
    );
    for listener in listeners {
        set_socket_address(&mut listener["address"], loopback_any);
    }
    let rewritten = rewrite_cert_paths(&mut config, certs);
    assert_eq!(
        rewritten, 3,
        "envoy.yaml should name 3 demo certificate files"
    );
    set_cluster_endpoint(&mut config, "fleet_authz", &options.authz);
    set_cluster_endpoint(&mut config, "app", &GrpcListen::Tcp(options.app));
    if let Some(http) = options.http {
        set_cluster_endpoint(&mut config, "fleet_authz_http", &GrpcListen::Tcp(http));
    }
    if !options.include_peer_certificate {
        ext_authz_filter(&mut config)["typed_config"]["include_peer_certificate"] = json!(false);
    }
    config
}

/// The `envoy.filters.http.ext_authz` entry of the `https` listener.
pub fn ext_authz_filter(config: &mut Value) -> &mut Value {
    let hcm = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
    hcm["typed_config"]["http_filters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.ext_authz")
        .expect("envoy.yaml has no ext_authz filter")
}

fn set_socket_address(address: &mut Value, addr: SocketAddr) {
    address["socket_address"] =
        json!({"address": addr.ip().to_string(), "port_value": addr.port()});
}

fn set_cluster_endpoint(config: &mut Value, name: &str, at: &GrpcListen) {
    let cluster = config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("envoy.yaml has no cluster named {name}"));
    let endpoints = &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"];
    assert_eq!(endpoints.as_array().map(Vec::len), Some(1));
    let address = &mut endpoints[0]["endpoint"]["address"];
    match at {
        GrpcListen::Tcp(addr) => set_socket_address(address, *addr),
        GrpcListen::Unix(path) => *address = json!({"pipe": {"path": path}}),
    }
}

/// Points every `deploy/demo/certs/<file>` string at `<certs>/<file>`.
fn rewrite_cert_paths(value: &mut Value, certs: &Path) -> usize {
    match value {
        Value::String(s) => match s.strip_prefix("deploy/demo/certs/") {
            Some(file) => {
                *s = certs.join(file).to_string_lossy().into_owned();
                1
            }
            None => 0,
        },
        Value::Array(items) => items.iter_mut().map(|v| rewrite_cert_paths(v, certs)).sum(),
        Value::Object(map) => map.values_mut().map(|v| rewrite_cert_paths(v, certs)).sum(),
        _ => 0,
    }
}
