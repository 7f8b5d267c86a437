//! `spikes` (item 3 of issue 20): does memory come back? The soak's server
//! (synced from a fake Fleet every 10 s) meets, one after the other, the
//! hostile inputs of the issue: a flood of distinct near-limit XFCC values,
//! 1 MiB XFCC values, HTTP/2 stream floods on connections whose
//! flow-control window is zero, a 200 MB policy file, a policy file of YAML
//! aliases, a 100 MB admin POST and endless Fleet answers (plain and gzip).
//! For each it prints RSS before (the median of 9 samples a second apart),
//! the peak seen while it lasts (sampled every 20 ms; a sync's own peak
//! may fall in it), and RSS one sync interval (10 s) after it ends (the
//! same median); the target is "after" within 20% of "before".

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use prost::{Message, bytes::Bytes};

use super::{
    Options, machine,
    soak::{Counts, first_sync, start_synced, syncs_reach},
};
use crate::{
    fake_fleet::{FakeFleet, Fault},
    fixture, grpc,
    report::sample,
};

/// The server's sync interval: "within one sync interval" is this long.
const SYNC_INTERVAL: Duration = Duration::from_secs(10);
/// How far above "before" RSS may be one sync interval after a spike.
const BAND: f64 = 0.20;

/// One spike's memory figures, MiB.
struct Spike {
    name: &'static str,
    outcome: String,
    before: f64,
    peak: f64,
    after: f64,
}

fn rss_mib(pid: u32) -> f64 {
    sample(pid).rss_kb as f64 / 1024.0
}

/// The median of 9 samples a second apart: a sync (every 10 s, a few
/// seconds long, its own peak) covers at most a third of them.
async fn steady_rss(pid: u32) -> f64 {
    let mut xs = Vec::new();
    for _ in 0..9 {
        xs.push(rss_mib(pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    xs.sort_by(f64::total_cmp);
    xs[4]
}

/// Samples RSS every 20 ms until `done`; returns the highest.
fn watch_peak(pid: u32, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<f64> {
    let peak = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while !done.load(Ordering::Relaxed) {
            peak.fetch_max(sample(pid).rss_kb, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    })
}

/// Check requests of device 0 whose XFCC is replaced by `count` distinct
/// values of `len` bytes each.
fn xfcc_requests(pem: &str, count: usize, len: usize) -> Vec<Bytes> {
    (0..count)
        .map(|i| {
            let mut req = fixture::check_request(pem, i);
            let http = req
                .attributes
                .as_mut()
                .and_then(|a| a.request.as_mut())
                .and_then(|r| r.http.as_mut())
                .expect("an HTTP request");
            let head = format!("Hash={i:064x};Cert=\"");
            let fill = len.saturating_sub(head.len() + 1);
            let value = format!("{head}{}\"", "A".repeat(fill));
            http.headers.insert("x-forwarded-client-cert".into(), value);
            Bytes::from(req.encode_to_vec())
        })
        .collect()
}

/// Sends every request of `requests` about `rounds` times over 16 streams.
async fn flood(addr: SocketAddr, requests: Vec<Bytes>, seconds: u64) -> String {
    let run = grpc::run(
        addr,
        Arc::new(requests),
        grpc::Mode::Closed(16),
        4,
        Duration::ZERO,
        Duration::from_secs(seconds),
    )
    .await;
    match run {
        Ok(r) => format!("{} allow, {} deny, {} refused", r.allow, r.deny, r.errors),
        Err(e) => format!("client failed: {e}"),
    }
}

/// Opens as many Check streams as the server lets it on each of
/// `connections` HTTP/2 connections whose flow-control window is zero, so
/// no answer can be sent, trying `attempts` per connection for `hold`;
/// returns how many streams were open at the end.
async fn zero_window_flood(
    addr: SocketAddr,
    request: Bytes,
    connections: usize,
    attempts: usize,
    hold: Duration,
) -> String {
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (request, opened) = (request.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            zero_window_connection(addr, request, attempts, hold, opened).await
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            failures.push(e.to_string());
        }
    }
    format!(
        "{} streams open on {connections} connection(s){}",
        opened.load(Ordering::Relaxed),
        if failures.is_empty() {
            String::new()
        } else {
            format!(" ({})", failures.join("; "))
        }
    )
}

/// One zero-window connection: sends Checks on new streams until `hold`
/// ends, never reading an answer.
async fn zero_window_connection(
    addr: SocketAddr,
    request: Bytes,
    attempts: usize,
    hold: Duration,
    opened: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await?;
    tokio::spawn(connection);
    let mut body = Vec::with_capacity(request.len() + 5);
    body.push(0);
    body.extend_from_slice(&(request.len() as u32).to_be_bytes());
    body.extend_from_slice(&request);
    let body = Bytes::from(body);
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + hold;
    for _ in 0..attempts {
        let ready = tokio::time::timeout_at(deadline, client.clone().ready()).await;
        let Ok(Ok(mut ready)) = ready else { break };
        let head = http::Request::post(format!(
            "http://{addr}/envoy.service.auth.v3.Authorization/Check"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
        let (answer, mut send) = ready.send_request(head, false)?;
        send.send_data(body.clone(), true)?;
        held.push(answer);
        opened.fetch_add(1, Ordering::Relaxed);
        client = ready;
    }
    tokio::time::sleep_until(deadline).await;
    drop(held);
    Ok(())
}

/// Makes Fleet's hosts answer endless (gzip when `gzip`) until a sync has
/// failed on it, then heals it and waits for a good sync.
async fn endless_fleet(fake: &FakeFleet, metrics: SocketAddr, gzip: bool) -> String {
    let before = Counts::read(metrics).await.unwrap_or_default();
    if gzip {
        fake.serve_gzip();
    }
    fake.set_fault("hosts", Fault::Endless);
    let failed = syncs_reach(metrics, |c| c.syncs_failed > before.syncs_failed).await;
    fake.clear_faults();
    let healed = syncs_reach(metrics, |c| c.syncs_ok > before.syncs_ok + 1.0).await;
    match (failed, healed) {
        (Ok(()), Ok(())) => "a sync failed at the cap; the next one succeeded".to_owned(),
        (f, h) => format!("failed: {f:?}, healed: {h:?}"),
    }
}

/// Writes `text` as the policy file and waits for the reload to be refused.
async fn bad_policy(dir: &Path, metrics: SocketAddr, text: &[u8]) -> String {
    let before = Counts::read(metrics).await.unwrap_or_default();
    let path = dir.join("policy.yaml");
    match fleet_authz::atomic_file::write_atomically(&path, text) {
        Ok(()) => {
            // The watcher reads it within a moment; give it a few.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let after = Counts::read(metrics).await.unwrap_or_default();
            let refused = after.reloads_failed - before.reloads_failed;
            let good =
                fleet_authz::atomic_file::write_atomically(&path, fixture::POLICY.as_bytes());
            format!(
                "{:.1} MB written, {refused} reload refused, then the good file back ({good:?})",
                text.len() as f64 / 1e6
            )
        }
        Err(e) => format!("could not write: {e}"),
    }
}

/// A policy of `count` lines, each an alias of one long anchored list.
fn alias_policy(count: usize) -> Vec<u8> {
    let mut text = String::from("version: 1\nbig: &big [");
    text.push_str(&"\"CVE-2024-0000\", ".repeat(200));
    text.push_str("]\nrefs:\n");
    for _ in 0..count {
        text.push_str("  - *big\n");
    }
    text.into_bytes()
}

/// POSTs a body of `bytes` bytes to the admin port over plain TCP, writing
/// until the server answers or closes; returns its status line.
async fn big_post(metrics: SocketAddr, bytes: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(metrics).await else {
        return "cannot connect".to_owned();
    };
    let head = format!(
        "POST /v1/break-glass HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {bytes}\r\nconnection: close\r\n\r\n"
    );
    let (mut read, mut write) = tcp.split();
    let writer = async {
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        if write.write_all(head.as_bytes()).await.is_err() {
            return sent;
        }
        while sent < bytes {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    };
    let reader = async {
        let mut answer = Vec::new();
        let _ = read.read_to_end(&mut answer).await;
        answer
    };
    let (sent, answer) = tokio::join!(writer, reader);
    let answer = String::from_utf8_lossy(&answer);
    format!(
        "{} after {} MB sent",
        answer.lines().next().unwrap_or("no answer"),
        sent / 1_000_000
    )
}

/// Runs `spike` with its peak watched, then measures RSS a sync interval on.
async fn measure_spike(
    pid: u32,
    name: &'static str,
    spike: impl std::future::Future<Output = String>,
) -> Spike {
    let before = steady_rss(pid).await;
    let done = Arc::new(AtomicBool::new(false));
    let peak = watch_peak(pid, done.clone());
    let outcome = spike.await;
    done.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap_or(0.0);
    tokio::time::sleep(SYNC_INTERVAL).await;
    let after = steady_rss(pid).await;
    let spike = Spike {
        name,
        outcome,
        before,
        peak,
        after,
    };
    println!("{}", spike.row());
    spike
}

pub async fn spikes(o: Options) -> anyhow::Result<()> {
    let pems = fixture::device_pems(o.devices)?;
    let (server, dir, fake) = start_synced(&o, &pems)?;
    let metrics = server
        .metrics
        .ok_or_else(|| anyhow::anyhow!("no metrics address"))?;
    first_sync(metrics).await?;
    // Two sync intervals to settle after the first sync.
    tokio::time::sleep(2 * SYNC_INTERVAL).await;
    println!(
        "Machine: {}\n\nfleet-authz synced from a fake Fleet of {} hosts every {} s.\n",
        machine(),
        o.hosts,
        SYNC_INTERVAL.as_secs()
    );
    let (pid, addr) = (server.pid(), server.addr());
    println!("{HEADER}");
    let pem = &pems[0];
    let mut spikes = Vec::new();
    spikes.push(
        measure_spike(pid, "4,000 distinct 60 KiB XFCC values, 10 s", async {
            flood(addr, xfcc_requests(pem, 4_000, 60 * 1024), 10).await
        })
        .await,
    );
    spikes.push(
        measure_spike(pid, "400 distinct 1 MiB XFCC values, 10 s", async {
            flood(addr, xfcc_requests(pem, 400, 1024 * 1024), 10).await
        })
        .await,
    );
    let check = Bytes::from(fixture::check_request(pem, 0).encode_to_vec());
    spikes.push(
        measure_spike(
            pid,
            "50,000 streams tried on 1 zero-window connection, held 10 s",
            async {
                zero_window_flood(addr, check.clone(), 1, 50_000, Duration::from_secs(10)).await
            },
        )
        .await,
    );
    spikes.push(
        measure_spike(
            pid,
            "50,000 streams tried on each of 16 zero-window connections, held 10 s",
            async {
                zero_window_flood(addr, check.clone(), 16, 50_000, Duration::from_secs(10)).await
            },
        )
        .await,
    );
    spikes.push(
        measure_spike(pid, "a 200 MB policy file", async {
            bad_policy(dir.path(), metrics, &vec![b'#'; 200_000_000]).await
        })
        .await,
    );
    spikes.push(
        measure_spike(pid, "a 0.9 MB policy file of YAML aliases", async {
            bad_policy(dir.path(), metrics, &alias_policy(100_000)).await
        })
        .await,
    );
    spikes.push(measure_spike(pid, "a 100 MB admin POST", big_post(metrics, 100_000_000)).await);
    spikes.push(
        measure_spike(
            pid,
            "an endless Fleet hosts answer (cap 256 MiB)",
            endless_fleet(&fake, metrics, false),
        )
        .await,
    );
    spikes.push(
        measure_spike(
            pid,
            "an endless gzip Fleet hosts answer (cap 256 MiB inflated)",
            endless_fleet(&fake, metrics, true),
        )
        .await,
    );
    let met = spikes
        .iter()
        .filter(|s| s.after / s.before <= 1.0 + BAND)
        .count();
    println!(
        "\n{met} of {} spikes: RSS back within 20% one sync interval later",
        spikes.len()
    );
    drop(server);
    Ok(())
}

const HEADER: &str = "| spike | outcome | RSS before MiB | peak MiB | RSS from 10 s after MiB | after / before | within 20% |\n|---|---|---|---|---|---|---|";

impl Spike {
    fn row(&self) -> String {
        let ratio = self.after / self.before;
        format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {ratio:.2} | {} |",
            self.name,
            self.outcome,
            self.before,
            self.peak,
            self.after,
            if ratio <= 1.0 + BAND { "met" } else { "missed" }
        )
    }
}
