//! Envoy in the loop: a plain-HTTP variant of the root `envoy.yaml`, a
//! minimal upstream app, and an HTTP/1.1 client at a fixed rate.
//!
//! The variant is derived from the shipped file at run time (so it follows
//! it): the listener drops TLS and binds 127.0.0.1:0, XFCC handling becomes
//! `ALWAYS_FORWARD_ONLY` so the client's header reaches ext_authz, the
//! peer certificate is not sent, and the access log becomes a file with one
//! line per request: its start and how long the Check took as Envoy timed it
//! (the same for every variant). `Authz::None` removes the ext_authz filter
//! altogether.
//!
//! Envoy is found as `tests/common/envoy.rs` finds it: `ENVOY_BIN`, `envoy`
//! on `PATH`, or the copy `cargo test` installs under `target/envoy-pip`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use prost::bytes::Bytes;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};

use hdrhistogram::Histogram;

use fleet_authz::config::GrpcListen;

use crate::report::{Counts, RunResult, histogram, wait_until_due};

/// The Envoy binary, or an error saying how to get one.
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    if let Some(paths) = std::env::var_os("PATH")
        && let Some(bin) = std::env::split_paths(&paths)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    {
        return Ok(bin);
    }
    let pip = crate::fixture::work_dir()?
        .parent()
        .map(|t| t.join("envoy-pip/envoy/_bin/envoy"))
        .filter(|p| p.is_file());
    pip.context("no Envoy: set ENVOY_BIN, put envoy on PATH, or run `cargo test --test envoy_e2e` once (it installs one under target/envoy-pip)")
}

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
            .arg(envoy_bin()?)
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = envoy.child.try_wait()? {
                bail!("envoy exited during startup ({status}): {}", envoy.log());
            }
            if let Some(admin) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                && let Some(port) = listener_port(admin).await
            {
                envoy.addr = SocketAddr::from(([127, 0, 0, 1], port));
                return Ok(envoy);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("envoy not ready after 30s: {}", envoy.log())
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

/// `GET path` over HTTP/1.1; the whole response when it is a 200.
pub async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

async fn listener_port(admin: SocketAddr) -> Option<u16> {
    get(admin, "/ready").await?;
    let body = get(admin, "/listeners?format=json").await?;
    // The body may be chunked; the JSON object is one small chunk.
    let body = body.split_once("\r\n\r\n")?.1;
    let json: Value = serde_json::from_str(body.get(body.find('{')?..=body.rfind('}')?)?).ok()?;
    let plain = json["listener_statuses"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "plain")?;
    let port = plain["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// The upstream app: answers every HTTP/1.1 request `200 ok`, keep-alive.
pub async fn serve_upstream(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(8192);
            loop {
                if read_head(&mut stream, &mut buf).await.is_none() {
                    return;
                }
                let ok =
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Reads one request or response head (and its `content-length` body) into
/// `buf`; returns the status code for a response, 0 for a request.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .ok()?
        .to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = head
        .strip_prefix("http/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Some(status)
}

/// Counts an answer by its HTTP status (`None`: no answer): 200 is an allow,
/// 403 a deny, anything else an error.
fn count(counts: &Counts, status: Option<u16>) {
    let c = match status {
        Some(200) => &counts.allow,
        Some(403) => &counts.deny,
        _ => &counts.errors,
    };
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// What one Envoy run measured.
pub struct HttpRun {
    /// Latency from when each request was sent.
    pub run: RunResult,
    pub hist: Histogram<u64>,
    /// Requests sent, warm-up included.
    pub sent: u64,
    /// Open loop only: p99 counted from when each request was due, which
    /// adds the client's timer lateness (tokio's timer has 1 ms resolution).
    pub p99_from_due_us: Option<u64>,
}

/// Closed loop on one keep-alive connection: each request is sent as soon
/// as the previous answer is read, for `warmup + duration`. With no idle
/// time between requests, the latency is what the path costs when no CPU
/// has gone to sleep: the floor under the open-loop figures.
pub async fn http_closed(
    addr: SocketAddr,
    requests: Arc<Vec<Bytes>>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<HttpRun> {
    let mut hist = histogram();
    let counts = Counts::default();
    let record_from = Instant::now() + warmup;
    let end = record_from + duration;
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut i = 0;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        stream.write_all(&requests[i % requests.len()]).await?;
        let status = read_head(&mut stream, &mut buf)
            .await
            .context("envoy closed the connection")?;
        i += 1;
        if sent >= record_from {
            hist.record(sent.elapsed().as_micros() as u64)?;
            count(&counts, Some(status));
        }
    }
    Ok(HttpRun {
        run: RunResult::new(&hist, &counts, duration),
        hist,
        sent: i as u64,
        p99_from_due_us: None,
    })
}

/// Sends `requests` (round robin) to `addr` at `rps` for `warmup + duration`;
/// each request takes an idle keep-alive connection or opens one. Latency is
/// counted from when the request was sent (taking a connection included),
/// and, for comparison, from when it was due. Well below capacity no request
/// waits for another, so the first is the path's latency without the
/// client's timer lateness, which is the same for every variant but adds up
/// to 1 ms of noise to each.
pub async fn http_load(
    addr: SocketAddr,
    requests: Arc<Vec<Bytes>>,
    rps: u64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<HttpRun> {
    let idle: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let hist = Arc::new(Mutex::new((histogram(), histogram())));
    let counts = Arc::new(Counts::default());
    let start = Instant::now() + Duration::from_millis(10);
    let record_from = start + warmup;
    let end = record_from + duration;
    let interval = Duration::from_secs_f64(1.0 / rps.max(1) as f64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    while let Some(due) = wait_until_due(start, interval, i, end).await {
        let (idle, hist, counts) = (idle.clone(), hist.clone(), counts.clone());
        let request = requests[i as usize % requests.len()].clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let pooled = idle.lock().ok().and_then(|mut v| v.pop());
            let stream = match pooled {
                Some(s) => Some(s),
                None => TcpStream::connect(addr).await.ok().inspect(|s| {
                    let _ = s.set_nodelay(true);
                }),
            };
            let mut status = None;
            if let Some(mut s) = stream {
                let mut buf = Vec::with_capacity(4096);
                if s.write_all(&request).await.is_ok() {
                    status = read_head(&mut s, &mut buf).await;
                }
                if status.is_some()
                    && let Ok(mut v) = idle.lock()
                {
                    v.push(s);
                }
            }
            if due >= record_from {
                if let Ok(mut h) = hist.lock() {
                    let _ = h.0.record(sent.elapsed().as_micros() as u64);
                    let _ = h.1.record(due.elapsed().as_micros() as u64);
                }
                count(&counts, status);
            }
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
    let (hist, from_due) = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| (histogram(), histogram()));
    Ok(HttpRun {
        run: RunResult::new(&hist, &counts, duration),
        hist,
        sent: i,
        p99_from_due_us: Some(from_due.value_at_quantile(0.99)),
    })
}

/// Second opinion from h2load (nghttp2) on the same Envoy: HTTP/1.1 on one
/// connection at `rps` (a request waits for the previous answer: over
/// several connections h2load's pacing sends them in bursts, which Envoy's
/// one worker then queues), one fixed XFCC header (device `pem`), for
/// `warmup + duration`. Latency comes from h2load's per-request
/// log (`--log-file`); requests that started in the warm-up are dropped.
/// Also returns when the recorded requests began (µs since the epoch).
/// `None` when h2load is not installed or fails. Asynchronous: the upstream
/// app answering Envoy runs on this same runtime.
pub async fn h2load_http(
    addr: SocketAddr,
    pem: &str,
    rps: u64,
    warmup: Duration,
    duration: Duration,
) -> Option<(Histogram<u64>, u64)> {
    let dir = tempfile::tempdir().ok()?;
    let log = dir.path().join("h2load.log");
    let total = rps * (warmup + duration).as_secs();
    let mut command = tokio::process::Command::new("h2load");
    command.args(["--h1", "-c", "1", "--rps", &rps.to_string()]);
    command
        .args(["-n", &total.to_string(), "--log-file"])
        .arg(&log);
    for (k, v) in crate::fixture::EXTRA_HEADERS {
        command.args(["-H", &format!("{k}: {v}")]);
    }
    command.args([
        "-H",
        &format!(
            "x-forwarded-client-cert: Cert=\"{}\"",
            fleet_authz::authz::request::url_encode_pem(pem)
        ),
    ]);
    let status = command
        .arg(format!("http://{addr}/reports/q3"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .ok()?;
    if !status.success() {
        return None;
    }
    // Columns: start (µs since the epoch), status, µs until the response ended.
    let text = std::fs::read_to_string(&log).ok()?;
    let rows: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let start = cols.next()?.parse().ok()?;
            let micros = cols.nth(1)?.parse().ok()?;
            Some((start, micros))
        })
        .collect();
    let first = rows.iter().map(|r| r.0).min()?;
    let record_from = first + warmup.as_micros() as u64;
    let mut hist = histogram();
    for (start, micros) in rows {
        if start >= record_from {
            hist.record(micros.max(1)).ok()?;
        }
    }
    Some((hist, record_from))
}
