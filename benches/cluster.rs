//! Cluster mode (issue 18 item 10), measured against the release binary, a
//! real nats-server and the fake Fleet on loopback, one machine:
//!
//! 1. **Fleet load per sync interval** with 1 (standalone), 3 and 8
//!    replicas: requests and body bytes the fake serves over `CYCLES` sync
//!    cycles, counted from the start of one cycle (`teams`, asked once per
//!    cycle) to the start of the cycle `CYCLES` later, scaled to one
//!    `sync_interval` by the wall time that took. 10,000 hosts, 5 s interval.
//! 2. **Leader publish → every follower decides**, at 100,000 hosts: from the
//!    moment the leader starts publishing a posture (its "posture published
//!    to the cluster" log line, less the `took` it reports) to each
//!    follower's "posture applied from the cluster" line for that version
//!    (logged once the posture is swapped in: the next Check decides on it).
//!    Leader and two followers, 10 s interval, `CLUSTER_BENCH_CYCLES`
//!    publishes after two of warm-up.
//! 3. **Follower RSS** at 100,000 hosts against a standalone instance
//!    syncing the same fake at the same interval (started after part 2, so
//!    its syncs do not share the CPUs with the publishes timed there):
//!    `VmRSS` of each, every 500 ms over two intervals once the standalone
//!    has synced three times; median and maximum.
//!
//! Every replica is its own `fleet-authz serve` process (JSON logs to a file),
//! so each RSS is its own; the fake Fleet runs in this process and serves
//! bodies from memory after building them once (a remote Fleet's CPU is not
//! on this machine). Run: `cargo bench --bench cluster`
//! (`CLUSTER_BENCH_HOSTS=N` for the 100k part, `CLUSTER_BENCH_CYCLES=N`,
//! `CLUSTER_BENCH_SKIP_LOAD=1` for parts 2 and 3 alone, `CLUSTER_BENCH_BIN`
//! for a copy of the release binary that a build elsewhere cannot replace).
//! Results: docs/bench-log/2026-11-30-cluster.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a failure aborts the run"
)]

#[path = "../tests/common/fake_fleet/mod.rs"]
#[allow(dead_code, clippy::result_large_err, reason = "test code, partly used")]
mod fake_fleet;
#[path = "../tests/common/nats.rs"]
mod nats;
#[path = "../tests/common/tools.rs"]
#[allow(dead_code, reason = "shared test tools, partly used")]
mod tools;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant, SystemTime},
};

use fake_fleet::{FakeFleet, FakeSpec};
use serde_json::Value;

const TOKEN: &str = "fake-fleet-token";
const LOAD_HOSTS: u64 = 10_000;
const LOAD_INTERVAL: Duration = Duration::from_secs(5);
const CYCLES: usize = 4;

/// The `fleet-authz` binary every replica runs.
fn binary() -> PathBuf {
    std::env::var_os("CLUSTER_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_fleet-authz")),
        PathBuf::from,
    )
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return eprintln!("cluster: run it with `cargo bench --bench cluster`");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let nats = nats::NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "version: 1\ndefaults:\n  deny: {failing_any_policy: true}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("key"), "bench-cluster-key-".repeat(3)).unwrap();
    let bench = Bench {
        dir: dir.path().to_owned(),
        nats: nats.url(),
    };

    let hosts = env_u64("CLUSTER_BENCH_HOSTS", 100_000);
    if std::env::var_os("CLUSTER_BENCH_SKIP_LOAD").is_none() {
        fleet_load(&bench).await;
    }
    println!("## Publish → followers, and RSS ({hosts} hosts)");
    let fake = start_fake(hosts).await;
    bench
        .propagation_and_rss(&fake, env_u64("CLUSTER_BENCH_CYCLES", 8) as usize)
        .await;
}

async fn fleet_load(bench: &Bench) {
    println!("## Fleet load per sync interval ({LOAD_HOSTS} hosts, interval {LOAD_INTERVAL:?})");
    let fake = start_fake(LOAD_HOSTS).await;
    let mut baseline = None;
    for replicas in [1usize, 3, 8] {
        let (requests, bytes, cycles) = bench.fleet_load(&fake, replicas).await;
        let (r0, b0) = *baseline.get_or_insert((requests, bytes));
        println!(
            "| {replicas} | {requests:.1} | {:.2} MB | {cycles:.2} | {:+.1}% / {:+.1}% |",
            bytes / 1e6,
            (requests / r0 - 1.0) * 100.0,
            (bytes / b0 - 1.0) * 100.0
        );
    }
    drop(fake);
}

async fn start_fake(hosts: u64) -> FakeFleet {
    let started = Instant::now();
    let fake = FakeFleet::start(FakeSpec {
        hosts,
        fingerprints_per_host: 3,
        policies: 20,
        failing_percent: 5,
        teams: 3,
        token: TOKEN.into(),
        query_id: 42,
        software_per_host: 0,
        // Fleet as of 2026: one report row per host, paged.
        report_rows: fake_fleet::ReportRows::PerHost,
        report_pages: true,
        ..FakeSpec::default()
    })
    .await;
    fake.cache_bodies();
    eprintln!("fake Fleet: {hosts} hosts in {:?}", started.elapsed());
    fake
}

struct Bench {
    dir: PathBuf,
    nats: String,
}

/// A `fleet-authz serve` process.
struct Replica {
    child: Child,
    http: SocketAddr,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Bench {
    /// Starts replica `name`; `cluster` is the cluster name (None: standalone).
    fn replica(
        &self,
        fake: &FakeFleet,
        name: &str,
        cluster: Option<&str>,
        interval: Duration,
    ) -> Replica {
        let (http, grpc, d) = (free_port(), free_port(), self.dir.display());
        let mut yaml = format!(
            "listen: {{grpc: \"127.0.0.1:{grpc}\", http: \"127.0.0.1:{http}\"}}
fleet: {{url: \"{url}\", token_file: {d}/token, certificate_query_id: 42, page_size: 1000, sync_interval: {s}s, request_timeout: 30s}}
policy_file: {d}/policy.yaml
telemetry: {{log_format: json}}
",
            url = fake.url(),
            s = interval.as_secs()
        );
        if let Some(cluster) = cluster {
            yaml.push_str(&format!(
                "cluster: {{nats_url: \"{}\", key_file: {d}/key, name: {cluster}, lease_ttl: 5s}}\n",
                self.nats
            ));
        }
        let config = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Replica {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            log,
        }
    }

    /// Requests and bytes per sync interval, and cycles per interval.
    async fn fleet_load(&self, fake: &FakeFleet, replicas: usize) -> (f64, f64, f64) {
        let cluster = format!("load{replicas}");
        let mut running = Vec::new();
        for i in 0..replicas {
            let name = format!("load{replicas}-{i}");
            let cluster = (replicas > 1).then_some(cluster.as_str());
            running.push(self.replica(fake, &name, cluster, LOAD_INTERVAL));
        }
        for r in &running {
            wait(Duration::from_secs(60), || async { ready(r.http).await }).await;
        }
        // A cycle starts when `teams` is asked: count from one start to the
        // start CYCLES later.
        let next_cycle = |after: usize| async move {
            wait(LOAD_INTERVAL * 3, || async {
                (fake.count("teams") > after).then_some(())
            })
            .await;
            (Instant::now(), fake.totals(), fake.count("teams"))
        };
        let (t0, (r0, b0), c0) = next_cycle(fake.count("teams")).await;
        let mut last = (t0, (r0, b0), c0);
        while last.2 < c0 + CYCLES {
            last = next_cycle(last.2).await;
        }
        let (t1, (r1, b1), c1) = last;
        let intervals = t1.duration_since(t0).as_secs_f64() / LOAD_INTERVAL.as_secs_f64();
        drop(running);
        (
            (r1 - r0) as f64 / intervals,
            (b1 - b0) as f64 / intervals,
            (c1 - c0) as f64 / intervals,
        )
    }

    async fn propagation_and_rss(&self, fake: &FakeFleet, cycles: usize) {
        let interval = Duration::from_secs(10);
        let leader = self.replica(fake, "leader", Some("prop"), interval);
        wait(Duration::from_secs(120), || async {
            role_is(leader.http, "leader").await
        })
        .await;
        let followers = [
            self.replica(fake, "follower-1", Some("prop"), interval),
            self.replica(fake, "follower-2", Some("prop"), interval),
        ];
        let target = 2 + cycles as u64;
        wait(interval * (target as u32 + 6), || async {
            let v = cluster_json(leader.http).await?["posture_version"].as_u64()?;
            (v >= target).then_some(())
        })
        .await;
        // Let the last publish reach the followers before reading the logs.
        tokio::time::sleep(Duration::from_secs(5)).await;
        report_propagation(&leader, &followers);

        // RSS: a standalone instance syncing the same fake at the same
        // interval, sampled with the followers every 500 ms over two
        // intervals once it has synced three times.
        let standalone = self.replica(fake, "standalone", None, interval);
        wait(interval * 8, || async {
            let (_, text) = get_text(standalone.http, "/metrics").await?;
            let synced = text
                .lines()
                .find(|l| l.starts_with("fleet_authz_syncs_total{result=\"success\"}"))?;
            (synced.rsplit(' ').next()?.parse::<f64>().ok()? >= 3.0).then_some(())
        })
        .await;
        let procs: Vec<(&str, &Replica)> = vec![
            ("standalone", &standalone),
            ("follower 1", &followers[0]),
            ("follower 2", &followers[1]),
            ("leader", &leader),
        ];
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); procs.len()];
        for _ in 0..40 {
            for (i, (_, r)) in procs.iter().enumerate() {
                samples[i].push(proc_kib(r.child.id(), "VmRSS:") as f64 / 1024.0);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[v.len() - 1])
        };
        let (s_median, s_max) = median(&mut samples[0].clone());
        for (i, (name, r)) in procs.iter().enumerate() {
            let (m, max) = median(&mut samples[i]);
            let hwm = proc_kib(r.child.id(), "VmHWM:") as f64 / 1024.0;
            println!(
                "{name}: RSS median {m:.1} MiB, max {max:.1} MiB over 20 s (peak ever {hwm:.1}); vs standalone median {:+.1}%, max {:+.1}%",
                (m / s_median - 1.0) * 100.0,
                (max / s_max - 1.0) * 100.0
            );
        }
    }
}

fn report_propagation(leader: &Replica, followers: &[Replica]) {
    let publishes = log_lines(&leader.log, "posture published to the cluster");
    let mut delays = Vec::new();
    for f in followers {
        for applied in log_lines(&f.log, "posture applied from the cluster") {
            let version = applied["version"].as_u64().unwrap();
            if version <= 2 {
                continue;
            }
            let Some(publish) = publishes
                .iter()
                .find(|p| p["version"].as_u64() == Some(version))
            else {
                continue;
            };
            let started =
                time_of(publish) - parse_debug_duration(publish["took"].as_str().unwrap());
            delays.push(
                time_of(&applied)
                    .duration_since(started)
                    .unwrap()
                    .as_secs_f64(),
            );
        }
    }
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() - 1) as f64 * p).round() as usize];
    println!(
        "publish → follower decides: {} samples, p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        delays.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    if let Some(last) = publishes.last() {
        println!(
            "posture object: {:.1} MB; its publish took {}",
            last["bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
            last["took"].as_str().unwrap_or("?")
        );
    }
}

async fn get_text(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

async fn wait<T, F, Fut>(limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn ready(addr: SocketAddr) -> Option<()> {
    let r = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
    r.status().is_success().then_some(())
}

async fn cluster_json(addr: SocketAddr) -> Option<Value> {
    let r = reqwest::get(format!("http://{addr}/v1/cluster"))
        .await
        .ok()?;
    r.json().await.ok()
}

async fn role_is(addr: SocketAddr, role: &str) -> Option<()> {
    (cluster_json(addr).await?["role"] == role).then_some(())
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn log_lines(path: &Path, message: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

fn time_of(line: &Value) -> SystemTime {
    humantime::parse_rfc3339(line["timestamp"].as_str().unwrap()).unwrap()
}

/// `Debug` of a `Duration`: `1.5s`, `850.2ms`, `12.1µs`, `900ns`.
fn parse_debug_duration(s: &str) -> Duration {
    let (number, unit) = s.split_at(s.find(|c: char| c.is_alphabetic() || c == 'µ').unwrap());
    let n: f64 = number.parse().unwrap();
    Duration::from_secs_f64(match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        _ => n / 1e9,
    })
}
