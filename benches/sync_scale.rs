//! Scale benchmark (issue 3 item 7): a full Fleet sync of 100,000 hosts (3
//! certificate fingerprints each, 20 global policies plus one per team, 5%
//! failing) from the fake Fleet on loopback, against the shipped binary.
//!
//! Three processes, so each RSS is its own: this orchestrator (which also
//! sends the Checks), the fake Fleet (this binary re-executed with
//! `SYNC_SCALE_ROLE=fleet`) and `fleet-authz serve` (the release binary).
//! fleet-authz syncs every 10 s (`SYNC_SCALE_INTERVAL=N` seconds); after
//! its first sync, Checks go at 500/s through `SYNC_SCALE_CYCLES` (default
//! 4) further syncs, each followed by an idle window (from 2 s after the sync
//! until the next one starts, and 5 s after the last). A sync's window ends
//! at the timestamp of fleet-authz's "fleet sync published" log line and
//! starts that line's `duration` earlier; a Check counts as "during" when it
//! was sent in such a window, as "idle" when sent in an idle window.
//! Requests, bytes and wall time are means over the measured syncs. Peak RSS
//! is `VmHWM`, steady RSS `VmRSS` 7 s after the last sync.
//! Then the Pomerium-style client (`SYNC_SCALE_ROLE=pomerium`, see
//! `sync_scale/pomerium_style.rs`) syncs the same fake once.
//!
//! The certificate query answers one row per host (`group_concat`, three
//! fingerprints in each), paged as newer Fleets page reports.
//!
//! Run: `cargo bench --bench sync_scale` (`SYNC_SCALE_HOSTS=N` for a smaller
//! run). Results: BENCHMARKS.md. Options for experiments:
//! `SYNC_SCALE_SKIP_POMERIUM=1`, `SYNC_SCALE_SLOW=1` (where the slowest
//! Checks fall), `SYNC_SCALE_FAKE_NICE=N`, `SYNC_SCALE_AUTHZ_ENV=K=V,…`,
//! `SYNC_SCALE_MEMBERSHIP=…`, `SYNC_SCALE_GZIP=1` (the fake gzips its
//! bodies, as Fleet with `server_gzip_responses`) and `SYNC_SCALE_NEIGHBOUR=1`
//! (another process runs the syncs; see `sync_scale/load.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a failure aborts the run"
)]

#[path = "../tests/common/fake_fleet/mod.rs"]
#[allow(
    dead_code,
    clippy::result_large_err,
    reason = "test code: the bench uses part of the fake, whose handlers return axum responses"
)]
mod fake_fleet;
#[path = "sync_scale/load.rs"]
mod load;
#[path = "sync_scale/pomerium_style.rs"]
mod pomerium_style;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use fake_fleet::{FakeFleet, FakeSpec, ReportRows};

const TOKEN: &str = "sync-scale-token";
const QUERY_ID: u64 = 42;
/// The host whose certificate the Checks present.
const DEVICE_HOST: u64 = 1;

fn hosts() -> u64 {
    std::env::var("SYNC_SCALE_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn main() {
    // reqwest is built without a default TLS provider (the crate picks ring).
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    match std::env::var("SYNC_SCALE_ROLE").as_deref() {
        Ok("fleet") => fleet_role(),
        Ok("pomerium") => runtime().block_on(pomerium_style::run(
            &std::env::var("SYNC_SCALE_URL").unwrap(),
            TOKEN,
            QUERY_ID,
        )),
        _ if std::env::args().any(|a| a == "--bench") => runtime().block_on(orchestrate()),
        _ => eprintln!("sync_scale: run it with `cargo bench --bench sync_scale`"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `(VmHWM, VmRSS)` of `pid` in kB.
pub fn proc_status(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

// === the fake Fleet process ===

/// Serves the fake; answers `stats` on stdin with `STATS requests bytes`,
/// `reset` with `OK`; exits when stdin closes.
fn fleet_role() {
    let rt = runtime();
    let started = Instant::now();
    let fake = rt.block_on(FakeFleet::start(FakeSpec {
        hosts: hosts(),
        fingerprints_per_host: 3,
        policies: 20,
        failing_percent: 5,
        teams: 3,
        token: TOKEN.into(),
        query_id: QUERY_ID,
        software_per_host: 100,
        // Fleet as of 2026 (DESIGN.md §7): the renamed paths, the report cap
        // raised to the host count, the recommended one-row-per-host
        // certificate query, and the report paged when asked.
        // `SYNC_SCALE_ROWS=certificate` sends one row per certificate
        // instead; at 3 per host the report is then clipped.
        report_rows: match std::env::var("SYNC_SCALE_ROWS").as_deref() {
            Ok("certificate") => ReportRows::PerCertificate,
            _ => ReportRows::PerHost,
        },
        report_pages: true,
        ..FakeSpec::default()
    }));
    fake.add_report_row(DEVICE_HOST, &std::env::var("SYNC_SCALE_SHA1").unwrap());
    // A remote Fleet's CPU is not on this machine: after the first sync
    // builds each body, the fake serves it from memory.
    fake.cache_bodies();
    // `SYNC_SCALE_GZIP=1`: as a Fleet with `server_gzip_responses` enabled.
    if std::env::var_os("SYNC_SCALE_GZIP").is_some() {
        fake.serve_gzip();
    }
    println!("READY {} {}", fake.url(), started.elapsed().as_millis());
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().as_str() {
            "stats" => {
                let (requests, bytes) = fake.totals();
                println!("STATS {requests} {bytes}");
            }
            "reset" => {
                fake.reset_counts();
                println!("OK");
            }
            other => println!("ERR unknown command {other}"),
        }
    }
}

/// The orchestrator's handle on the fake Fleet process.
struct Fake {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl Fake {
    fn spawn(sha1: &str) -> Self {
        // `SYNC_SCALE_FAKE_NICE=N` runs the fake Fleet at nice N (via
        // nice(1)), so its CPU competes less with the Checks under test.
        let exe = std::env::current_exe().unwrap();
        let mut command = match std::env::var("SYNC_SCALE_FAKE_NICE") {
            Ok(n) => {
                let mut c = Command::new("nice");
                c.args(["-n", &n]).arg(&exe);
                c
            }
            Err(_) => Command::new(&exe),
        };
        let mut child = command
            .env("SYNC_SCALE_ROLE", "fleet")
            .env("SYNC_SCALE_SHA1", sha1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let mut parts = line.split_whitespace().skip(1);
        let url = parts.next().unwrap().to_owned();
        eprintln!(
            "fake Fleet ready at {url} ({} hosts generated in {} ms)",
            hosts(),
            parts.next().unwrap()
        );
        Self {
            child,
            stdin,
            stdout,
            url,
        }
    }

    fn command(&mut self, cmd: &str) -> Vec<u64> {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    }

    /// `(requests, bytes)` served since the last reset.
    fn stats(&mut self) -> (u64, u64) {
        let v = self.command("stats");
        (v[0], v[1])
    }

    fn reset(&mut self) {
        self.command("reset");
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === orchestration ===

async fn orchestrate() {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/demo/certs/device-compliant.pem"
    ))
    .unwrap();
    let der = fleet_authz::identity::url_pem_to_der(&pem).unwrap();
    let sha1 = fleet_authz::fingerprint::Fingerprint::of_der(&der)
        .to_hex()
        .to_uppercase();
    let mut fake = Fake::spawn(&sha1);

    let authz = load::run_fleet_authz(&mut fake, &pem).await;

    if std::env::var_os("SYNC_SCALE_SKIP_POMERIUM").is_some() {
        return;
    }
    fake.reset();
    let started = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .env("SYNC_SCALE_ROLE", "pomerium")
        .env("SYNC_SCALE_URL", &fake.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("pomerium-style run failed: {text}"))
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (fake_requests, fake_bytes) = fake.stats();
    eprintln!(
        "pomerium-style run took {:?} (incl. 3 s hold)",
        started.elapsed()
    );
    let pom = load::Figures {
        requests: v[0],
        bytes: v[1],
        wall: Duration::from_millis(v[2]),
        hosts: v[3],
        peak_kb: v[5],
        steady_kb: v[6],
        steady_first_kb: None,
        fake_requests,
        fake_bytes,
        idle: None,
        during: None,
    };
    load::print_table(&authz, &pom);
}
