//! `soak` (item 5 of issue 20): fleet-authz at a fixed share of its measured
//! maximum for half an hour, as in production: synced from a Fleet every
//! 10 s (the fake Fleet of the tests, `--hosts` hosts, the load devices
//! enrolled on the first of them), a snapshot written after each sync, and
//! its policy file rewritten every minute so it reloads. Each minute it
//! records the server's RSS, open file descriptors, p99 and every count of
//! trouble; at the end it judges the targets: RSS flat within ±10% of its
//! median after the first 5 minutes, the fd count not growing, no error.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context;

use super::{Options, Server, machine, measure};
use crate::{
    fake_fleet::{FakeFleet, FakeSpec},
    fixture, grpc,
    report::{RunResult, ms, sample},
    tools,
};

/// Minutes left out of the flatness judgement (warm-up).
const SETTLE_MINUTES: usize = 5;
/// How far RSS may move from its median after the warm-up.
const RSS_BAND: f64 = 0.10;

/// One minute of the soak.
#[derive(Debug, Clone)]
struct Minute {
    run: RunResult,
    /// The median of the minute's once-a-second samples (a sample taken
    /// mid-sync reads higher than one taken between syncs).
    rss_mib: f64,
    rss_low_mib: f64,
    rss_high_mib: f64,
    hwm_mib: f64,
    fds: usize,
    counts: Counts,
    snapshot_age_s: f64,
}

/// Counters read from the server's `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub(super) syncs_ok: f64,
    pub(super) syncs_failed: f64,
    reloads_ok: f64,
    pub(super) reloads_failed: f64,
}

impl Counts {
    pub(super) async fn read(addr: SocketAddr) -> anyhow::Result<Self> {
        let text = tools::http_get(addr, "/metrics")
            .await
            .context("/metrics did not answer")?;
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(Self {
            syncs_ok: value(r#"fleet_authz_syncs_total{result="success"} "#),
            syncs_failed: value(r#"fleet_authz_syncs_total{result="failure"} "#),
            reloads_ok: value(r#"fleet_authz_policy_reloads_total{result="success"} "#),
            reloads_failed: value(r#"fleet_authz_policy_reloads_total{result="failure"} "#),
        })
    }
}

/// Starts the fake Fleet on a thread of its own (so its work is not done
/// on the client's runtime) with the devices enrolled; returns a handle.
fn start_fleet(hosts: u64, pems: &[String]) -> anyhow::Result<FakeFleet> {
    let fps = fixture::fingerprints(pems)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("fake Fleet runtime");
        rt.block_on(async move {
            let fake = FakeFleet::start(FakeSpec {
                hosts,
                fingerprints_per_host: 3,
                policies: 20,
                failing_percent: 5,
                report_cap: 10 * hosts as usize,
                ..FakeSpec::default()
            })
            .await;
            // Enrolled devices pass every policy, have no CVE and were seen
            // now (the fake's hosts were last seen days ago): 19 in 20 are
            // allowed, every 20th fails the first (critical) policy again.
            let seen = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            for (i, fp) in fps.iter().enumerate() {
                let id = i as u64 + 1;
                fake.enrol(id, fp);
                fake.update_host(id, |h| {
                    h.seen_time = seen.clone();
                    h.cves.clear();
                    if i % fixture::DENY_EVERY == 0 {
                        h.responses.values_mut().for_each(|r| *r = "fail".into());
                    }
                });
            }
            let _sent = tx.send(fake.clone());
            std::future::pending::<()>().await;
        });
    });
    rx.recv().context("the fake Fleet did not start")
}

/// A fake Fleet of `o.hosts` hosts with the devices enrolled, and
/// fleet-authz synced from it; the directory holds its policy, token and
/// snapshot.
pub(super) fn start_synced(
    o: &Options,
    pems: &[String],
) -> anyhow::Result<(Server, tempfile::TempDir, FakeFleet)> {
    let fake = start_fleet(o.hosts, pems)?;
    let url = fake.url();
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("fleet-token"), fake.token())?;
    let dir_arg = dir.path().display().to_string();
    let server = Server::start_with(
        "fleet-synced",
        o,
        ["--fleet-url", url.as_str(), "--dir", dir_arg.as_str()],
    )?;
    Ok((server, dir, fake))
}

/// RSS samples of `pid` (MiB), one a second, gathered until taken.
fn sample_rss_every_second(pid: u32) -> Arc<std::sync::Mutex<Vec<f64>>> {
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = samples.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let mib = sample(pid).rss_kb as f64 / 1024.0;
            into.lock().unwrap().push(mib);
        }
    });
    samples
}

/// Lowest, median and highest of `xs` (zeros when empty).
fn spread(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    match (xs.first(), xs.get(xs.len() / 2), xs.last()) {
        (Some(l), Some(m), Some(h)) => (*l, *m, *h),
        _ => (0.0, 0.0, 0.0),
    }
}

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Seconds since `path` was last written (NaN when it does not exist).
fn age_s(path: &Path) -> f64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(f64::NAN, |d| d.as_secs_f64())
}

/// Waits until the server has published its first sync.
pub(super) async fn first_sync(metrics: SocketAddr) -> anyhow::Result<()> {
    syncs_reach(metrics, |c| c.syncs_ok >= 1.0).await
}

/// Waits (at most 5 minutes) until the server's counts satisfy `done`.
pub(super) async fn syncs_reach(
    metrics: SocketAddr,
    done: impl Fn(Counts) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !Counts::read(metrics).await.is_ok_and(&done) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the server's sync counts did not get there in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Item 5: `minutes` minutes at `fraction` of the maximum, one row a minute.
pub async fn soak(o: Options) -> anyhow::Result<()> {
    let pems = fixture::device_pems(o.devices)?;
    let requests = Arc::new(fixture::encoded_requests(&pems));
    let (server, dir, _fake) = start_synced(&o, &pems)?;
    let metrics = server.metrics.context("no metrics address")?;
    first_sync(metrics).await?;
    let max = measure(&server, &o, grpc::Mode::Closed(o.concurrency), &requests).await?;
    let rate = (max.run.rps * o.fraction).round() as u64;
    println!(
        "Machine: {}\n\nfleet-authz synced from a fake Fleet of {} hosts every 10 s, snapshot each sync, \
         policy rewritten each minute; max {:.0} req/s; soak at {rate} req/s ({:.0}%) for {} min.\n",
        machine(),
        o.hosts,
        max.run.rps,
        o.fraction * 100.0,
        o.minutes
    );
    let policy = dir.path().join("policy.yaml");
    let snapshot = dir.path().join("snapshot.pb");
    let mut minutes = Vec::new();
    let rss = sample_rss_every_second(server.pid());
    println!("{HEADER}");
    for i in 0..o.minutes as usize {
        if i > 0 {
            let text = format!("{}# soak minute {i}\n", fixture::POLICY);
            fleet_authz::atomic_file::write_atomically(&policy, text.as_bytes())?;
        }
        let run = grpc::run(
            server.addr(),
            requests.clone(),
            grpc::Mode::Rate(rate),
            o.connections,
            Duration::ZERO,
            Duration::from_secs(60),
        )
        .await?;
        let s = sample(server.pid());
        let (rss_low_mib, rss_mib, rss_high_mib) =
            spread(std::mem::take(&mut *rss.lock().unwrap()));
        let minute = Minute {
            run,
            rss_mib,
            rss_low_mib,
            rss_high_mib,
            hwm_mib: s.hwm_kb as f64 / 1024.0,
            fds: fds(server.pid()),
            counts: Counts::read(metrics).await?,
            snapshot_age_s: age_s(&snapshot),
        };
        println!("{}", row(i + 1, &minute));
        minutes.push(minute);
    }
    println!("\n{}", verdict(&minutes));
    Ok(())
}

const HEADER: &str = "| minute | req/s | p50 ms | p99 ms | max ms | allow/deny/error | VmRSS MiB median (low–high) | VmHWM MiB | fds | syncs ok/failed | policy reloads ok/failed | snapshot age s |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

fn row(n: usize, m: &Minute) -> String {
    let r = &m.run;
    let c = m.counts;
    format!(
        "| {n} | {:.0} | {} | {} | {} | {}/{}/{} | {:.1} ({:.1}–{:.1}) | {:.1} | {} | {}/{} | {}/{} | {:.1} |",
        r.rps,
        ms(r.p50_us),
        ms(r.p99_us),
        ms(r.max_us),
        r.allow,
        r.deny,
        r.errors,
        m.rss_mib,
        m.rss_low_mib,
        m.rss_high_mib,
        m.hwm_mib,
        m.fds,
        c.syncs_ok,
        c.syncs_failed,
        c.reloads_ok,
        c.reloads_failed,
        m.snapshot_age_s
    )
}

/// The three targets, judged on the minutes after the warm-up.
fn verdict(minutes: &[Minute]) -> String {
    let settled = minutes.get(SETTLE_MINUTES..).unwrap_or_default();
    let mut rss: Vec<f64> = settled.iter().map(|m| m.rss_mib).collect();
    rss.sort_by(f64::total_cmp);
    let median = rss.get(rss.len() / 2).copied().unwrap_or(0.0);
    let (low, high) = (
        rss.first().copied().unwrap_or(0.0),
        rss.last().copied().unwrap_or(0.0),
    );
    let rss_flat =
        median > 0.0 && low >= median * (1.0 - RSS_BAND) && high <= median * (1.0 + RSS_BAND);
    // Connections to Fleet come and go with each sync, so the count moves
    // by a few; flat means no growth: the last third's highest is no higher
    // than the first third's highest.
    let fds: Vec<usize> = settled.iter().map(|m| m.fds).collect();
    let third = (fds.len() / 3).max(1);
    let highest = |xs: &[usize]| xs.iter().max().copied().unwrap_or(0);
    let (fd_early, fd_late) = (
        highest(&fds[..third.min(fds.len())]),
        highest(&fds[fds.len().saturating_sub(third)..]),
    );
    let (fd_low, fd_high) = (fds.iter().min().copied().unwrap_or(0), highest(&fds));
    let errors: u64 = minutes.iter().map(|m| m.run.errors).sum();
    let last = minutes.last().map(|m| m.counts).unwrap_or_default();
    let trouble = errors as f64 + last.syncs_failed + last.reloads_failed;
    let met = |ok: bool| if ok { "met" } else { "missed" };
    format!(
        "RSS after minute {SETTLE_MINUTES}: {low:.1}–{high:.1} MiB, median {median:.1} (±{:.0}% band): {}\n\
         fds after minute {SETTLE_MINUTES}: {fd_low}–{fd_high}, highest {fd_early} in the first third, {fd_late} in the last: {}\n\
         errors: {errors} Check errors, {} failed syncs, {} failed reloads ({} syncs, {} reloads in all): {}",
        RSS_BAND * 100.0,
        met(rss_flat),
        met(fd_late <= fd_early),
        last.syncs_failed,
        last.reloads_failed,
        last.syncs_ok,
        last.reloads_ok,
        met(trouble == 0.0)
    )
}
