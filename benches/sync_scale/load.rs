//! The fleet-authz side: writes a config, starts the release binary against
//! the fake Fleet, sends Checks at a fixed rate while it syncs and while it
//! does not, reads its `/metrics` and `/proc/<pid>/status`.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hdrhistogram::Histogram;
use tokio::sync::watch;

use super::{Fake, proc_status};

/// Checks per second, sent open-loop (each on its own task).
const RATE: u64 = 500;
/// A positive count from the environment variable `name`, or `default`.
fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// fleet-authz's `sync_interval`: `SYNC_SCALE_INTERVAL` seconds, default 10.
fn sync_interval_secs() -> u64 {
    env_count("SYNC_SCALE_INTERVAL", 10)
}

const POLICY: &str = "version: 1\ndefaults:\n  deny: {failing_critical_policy: true}\n";

/// Latency percentiles of one phase, in microseconds.
#[derive(Clone)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    pub errors: u64,
}

/// What one side's sync cost.
pub struct Figures {
    /// Requests and bytes as the client counted them.
    pub requests: u64,
    pub bytes: u64,
    pub wall: Duration,
    pub hosts: u64,
    pub peak_kb: u64,
    pub steady_kb: u64,
    /// fleet-authz only: RSS as its first sync ends (before the allocator returns the sync's memory).
    pub steady_first_kb: Option<u64>,
    /// Requests and bytes as the fake Fleet counted them.
    pub fake_requests: u64,
    pub fake_bytes: u64,
    pub idle: Option<Latency>,
    pub during: Option<Latency>,
}

struct Sample {
    sent: Instant,
    micros: u64,
    ok: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sum of every series of metric `name` in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Authz {
    child: Child,
    http: String,
}

impl Drop for Authz {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Authz {
    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// (requests, bytes, sync seconds, successful syncs) so far.
    async fn sync_counters(&self) -> (u64, u64, f64, u64) {
        let m = self.metrics().await;
        (
            metric(&m, "fleet_authz_fleet_requests_total") as u64,
            metric(&m, "fleet_authz_fleet_received_bytes_total") as u64,
            metric(&m, "fleet_authz_sync_duration_seconds_sum"),
            metric(&m, "fleet_authz_syncs_total") as u64,
        )
    }
}

fn spawn_authz(fake_url: &str, dir: &std::path::Path, interval: u64) -> (Authz, u16) {
    let (grpc, http) = (free_port(), free_port());
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("token"), super::TOKEN).unwrap();
    let config = format!(
        "listen: {{grpc: \"127.0.0.1:{grpc}\", http: \"127.0.0.1:{http}\"}}
fleet:
  url: {fake_url}
  token_file: {d}/token
  certificate_query_id: {q}
  sync_interval: {interval}s
  request_timeout: 60s
  recheck: {{enabled: false}}
  membership: {membership}
policy_file: {d}/policy.yaml
telemetry: {{log_format: json}}
",
        d = dir.display(),
        q = super::QUERY_ID,
        membership = std::env::var("SYNC_SCALE_MEMBERSHIP").unwrap_or_else(|_| "auto".into()),
    );
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let log = std::fs::File::create(dir.join("fleet-authz.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-authz"));
    // `SYNC_SCALE_AUTHZ_ENV=K=V,K=V` tries allocator settings such as MALLOC_ARENA_MAX.
    for kv in std::env::var("SYNC_SCALE_AUTHZ_ENV")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let child = cmd
        .args(["serve", "--config"])
        .arg(dir.join("config.yaml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    (
        Authz {
            child,
            http: format!("http://127.0.0.1:{http}"),
        },
        grpc,
    )
}

/// Sends Checks at [`RATE`] until `stop`, each on its own task.
async fn generate(
    grpc: u16,
    pem: String,
    samples: Arc<Mutex<Vec<Sample>>>,
    mut stop: watch::Receiver<bool>,
) {
    let client = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    let request =
        fleet_authz::authz::request::build_check_request(&pem, &[], "app.example.com", "/", false);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let (mut client, request, samples) = (client.clone(), request.clone(), samples.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let ok = client.check(request).await.is_ok();
            let micros = sent.elapsed().as_micros() as u64;
            samples.lock().unwrap().push(Sample { sent, micros, ok });
        });
    }
}

fn latency(samples: &[Sample], windows: &[(Instant, Instant)]) -> Latency {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for s in samples {
        if windows.iter().any(|(a, b)| s.sent >= *a && s.sent < *b) {
            if s.ok {
                h.record(s.micros.max(1)).unwrap();
            } else {
                errors += 1;
            }
        }
    }
    Latency {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
        errors,
    }
}

async fn poll<T>(mut f: impl AsyncFnMut() -> Option<T>, every: Duration, what: &str) -> T {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// Measured sync cycles: `SYNC_SCALE_CYCLES`, default 4.
fn cycles() -> usize {
    usize::try_from(env_count("SYNC_SCALE_CYCLES", 4)).unwrap_or(4)
}

/// Every sync fleet-authz has published so far, as (start, end): the end is
/// the timestamp of its "fleet sync published" log line, the start that less
/// the line's `duration`.
fn published(log: &std::path::Path) -> Vec<(Instant, Instant)> {
    let (base_instant, base_time) = (Instant::now(), SystemTime::now());
    let at = |time: SystemTime| match time.duration_since(base_time) {
        Ok(after) => base_instant + after,
        Err(before) => base_instant - before.duration(),
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("\"fleet sync published\""))
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let end = humantime::parse_rfc3339(v["timestamp"].as_str()?).ok()?;
            let took = debug_duration(v["duration"].as_str()?)?;
            Some((at(end - took), at(end)))
        })
        .collect()
}

/// Parses a `Duration`'s `Debug` text ("2.94s", "941.2ms", "12µs").
fn debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

/// Starts fleet-authz, waits for its first sync, measures Checks idle and
/// during its next syncs, returns the first of those syncs' figures.
pub async fn run_fleet_authz(fake: &mut Fake, pem: &str) -> Figures {
    let dir = tempfile::TempDir::new().unwrap();
    fake.reset();
    let started = Instant::now();
    // `SYNC_SCALE_NEIGHBOUR=1`: the server under Checks syncs only at start,
    // and a second fleet-authz (the neighbour) runs the measured syncs from
    // the same fake, so the "during" windows are another process's syncs.
    // It tells a stall of the process that syncs from one of the machine.
    // The measured server's sync figures (requests, bytes, wall time) are
    // then zero, and the fake's counts include the neighbour's first sync.
    let neighbour = std::env::var_os("SYNC_SCALE_NEIGHBOUR").is_some();
    let interval = if neighbour {
        3600
    } else {
        sync_interval_secs()
    };
    let (authz, grpc) = spawn_authz(&fake.url, dir.path(), interval);
    let pid = authz.child.id();
    let ready_url = format!("{}/readyz", authz.http);
    poll(
        async || {
            let r = reqwest::get(&ready_url).await.ok()?;
            r.status().is_success().then_some(())
        },
        Duration::from_millis(20),
        "the first sync",
    )
    .await;
    let ready = Instant::now();
    let (r1, b1, s1, _) = authz.sync_counters().await;
    let (peak1, _) = proc_status(pid);
    eprintln!(
        "first sync: ready after {:?}; {r1} requests, {b1} bytes, {s1:.2} s; peak RSS {} MB",
        ready - started,
        peak1 / 1024
    );

    let samples = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let load = tokio::spawn(generate(grpc, pem.to_owned(), samples.clone(), stop_rx));
    // Several syncs, each followed by an idle window, so both phases see the
    // same machine (its speed drifts) and p99 rests on thousands of Checks.
    // Nothing asks anything of either server while Checks are measured but
    // a read of fleet-authz's log once a second, the same in both phases:
    // the sync windows come from that log afterwards.
    fake.reset();
    let steady1 = proc_status(pid).1;
    let neighbour_dir = tempfile::TempDir::new().unwrap();
    let _neighbour =
        neighbour.then(|| spawn_authz(&fake.url, neighbour_dir.path(), sync_interval_secs()));
    let syncing = if neighbour { &neighbour_dir } else { &dir };
    let log = syncing.path().join("fleet-authz.log");
    let syncs = poll(
        async || {
            let syncs = published(&log);
            (syncs.len() > cycles()).then_some(syncs)
        },
        Duration::from_secs(1),
        "the measured syncs",
    )
    .await;
    // The first published sync is the start-up one; a later one may have
    // been logged since the last poll and is not measured.
    let sync_windows = &syncs[1..=cycles()];
    let mut idle_windows = Vec::new();
    // The neighbour's start-up sync falls in the first idle window unless
    // that begins after it.
    let mut idle_from = if neighbour {
        syncs[0].1 + Duration::from_secs(2)
    } else {
        ready + Duration::from_secs(1)
    };
    for (i, (start, end)) in sync_windows.iter().enumerate() {
        idle_windows.push((idle_from, *start));
        eprintln!(
            "measured sync {}: {:?}, {:?} after the previous idle window began",
            i + 1,
            *end - *start,
            start.saturating_duration_since(idle_from)
        );
        idle_from = *end + Duration::from_secs(2);
    }
    let idle_end = idle_from + Duration::from_secs(5);
    idle_windows.push((idle_from, idle_end));
    tokio::time::sleep_until(idle_end.into()).await;
    let (peak, steady) = proc_status(pid);
    let _ = stop_tx.send(true);
    load.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let (r2, b2, s2, _) = authz.sync_counters().await;
    let (fake_requests, fake_bytes) = fake.stats();
    let n = sync_windows.len() as u64;
    eprintln!(
        "RSS before the measured syncs {} MB; steady RSS {} MB, peak {} MB",
        steady1 / 1024,
        steady / 1024,
        peak / 1024
    );
    if std::env::var_os("SYNC_SCALE_SLOW").is_some() {
        // Where in its sync the slowest Checks fall (ms after the start).
        let mut slow: Vec<(u64, usize, u128)> = samples
            .iter()
            .filter_map(|s| {
                let (i, (a, _)) = sync_windows
                    .iter()
                    .enumerate()
                    .find(|(_, (a, b))| s.sent >= *a && s.sent < *b)?;
                Some((s.micros, i + 1, (s.sent - *a).as_millis()))
            })
            .collect();
        slow.sort_unstable_by(|a, b| b.cmp(a));
        slow.truncate(15);
        eprintln!("slowest Checks during the syncs (µs, sync, ms after its start): {slow:?}");
    }
    let (idle, during) = (
        latency(&samples, &idle_windows),
        latency(&samples, sync_windows),
    );
    eprintln!(
        "Check latency idle: {}; during the sync: {}",
        lat(&Some(idle.clone())),
        lat(&Some(during.clone()))
    );
    let hosts = super::hosts();
    drop(authz);
    Figures {
        requests: (r2 - r1) / n,
        bytes: (b2 - b1) / n,
        wall: Duration::from_secs_f64((s2 - s1) / n as f64),
        hosts,
        peak_kb: peak,
        steady_kb: steady,
        steady_first_kb: Some(steady1),
        fake_requests: fake_requests / n,
        fake_bytes: fake_bytes / n,
        idle: Some(idle),
        during: Some(during),
    }
}

fn mb(kb: u64) -> String {
    format!("{:.0} MB", kb as f64 / 1024.0)
}

fn lat(l: &Option<Latency>) -> String {
    match l {
        None => "–".into(),
        Some(l) => format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} Checks, {} errors)",
            l.p50 as f64 / 1000.0,
            l.p99 as f64 / 1000.0,
            l.max as f64 / 1000.0,
            l.count,
            l.errors
        ),
    }
}

/// Prints the BENCHMARKS.md table.
pub fn print_table(a: &Figures, p: &Figures) {
    let row = |name: &str, f: &dyn Fn(&Figures) -> String| {
        println!("| {name} | {} | {} |", f(a), f(p));
    };
    println!("\n| | fleet-authz | Pomerium-style |\n|---|---|---|");
    row("hosts", &|f| f.hosts.to_string());
    row("requests (client / fake)", &|f| {
        format!("{} / {}", f.requests, f.fake_requests)
    });
    row("bytes received (client / fake)", &|f| {
        format!(
            "{:.1} MB / {:.1} MB",
            f.bytes as f64 / 1e6,
            f.fake_bytes as f64 / 1e6
        )
    });
    row("sync wall time", &|f| {
        format!("{:.2} s", f.wall.as_secs_f64())
    });
    row("peak RSS (VmHWM)", &|f| mb(f.peak_kb));
    row("RSS as the 1st sync ends (VmRSS)", &|f| {
        f.steady_first_kb.map_or("–".into(), mb)
    });
    row("steady RSS (VmRSS, 7 s after the sync)", &|f| {
        mb(f.steady_kb)
    });
    row("Check latency idle", &|f| lat(&f.idle));
    row("Check latency during sync", &|f| lat(&f.during));
}
