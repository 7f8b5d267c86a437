//! The measurement runs: servers as child processes pinned to CPU 0, the
//! client here on CPU 1; baseline and fleet-authz alternate round by round,
//! so both see the same machine. Prints Markdown (also written to
//! `target/load/report.md`).

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use prost::bytes::Bytes;

use crate::{
    envoy::{self, Authz, Envoy},
    fixture, grpc,
    report::{CpuTimes, ProcSample, RunResult, histogram, ms, ratio, sample},
};
use fleet_authz::config::GrpcListen;

/// CPUs of the server side (and Envoy) and of the client side.
const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";

/// Suite settings from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub hosts: u64,
    pub devices: usize,
    pub envoy_rps: u64,
    pub envoy: bool,
    /// Item 3 in a closed loop on one connection (`--closed`) instead of at
    /// `envoy_rps`.
    pub closed: bool,
    pub minutes: u64,
    pub fraction: f64,
    /// CPUs of the servers under test (`--server-cpus`, default CPU 0, where
    /// Envoy runs too).
    pub server_cpus: String,
    /// Item 3 also asks the allow-shaped baseline (`--shaped`).
    pub shaped: bool,
    /// Item 3 by h2load alone, each server's run right after a run with no
    /// ext_authz that it is compared with (`--paired`).
    pub paired: bool,
}

impl Options {
    /// Reads `--duration`, `--rounds`, … with the documented defaults.
    pub fn parse(args: &[String]) -> anyhow::Result<Self> {
        use crate::{opt, opt_or};
        Ok(Self {
            duration: Duration::from_secs(opt_or(args, "--duration", 10)?),
            warmup: Duration::from_secs(opt_or(args, "--warmup", 2)?),
            rounds: opt_or(args, "--rounds", 2)?,
            concurrency: opt_or(args, "--concurrency", 64)?,
            connections: opt_or(args, "--connections", 4)?,
            hosts: opt_or(args, "--hosts", 100_000)?,
            devices: opt_or(args, "--devices", 1000)?,
            envoy_rps: opt_or(args, "--envoy-rps", 1000)?,
            envoy: !args.iter().any(|a| a == "--no-envoy"),
            closed: args.iter().any(|a| a == "--closed"),
            minutes: opt_or(args, "--minutes", 10)?,
            fraction: opt_or(args, "--fraction", 0.7)?,
            server_cpus: opt(args, "--server-cpus").unwrap_or_else(|| SERVER_CPU.to_owned()),
            shaped: args.iter().any(|a| a == "--shaped"),
            paired: args.iter().any(|a| a == "--paired"),
        })
    }
}

/// Pins this process (and the threads it creates later) to `cpus`.
pub fn pin_self(cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-cp", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("taskset not found")?;
    if !status.success() {
        bail!("taskset -cp {cpus} failed");
    }
    Ok(())
}

/// A server under test, in its own process; stopped on drop.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    at: GrpcListen,
    /// fleet-authz's HTTP listener (`/metrics`); `None` for a baseline.
    metrics: Option<SocketAddr>,
}

impl Server {
    /// Starts a TCP server.
    fn start(kind: &str, o: &Options) -> anyhow::Result<Self> {
        Self::start_on(kind, o, false)
    }

    /// Starts a server, on a Unix socket when `unix`.
    fn start_on(kind: &str, o: &Options, unix: bool) -> anyhow::Result<Self> {
        let mut child = Command::new("taskset")
            .args(["-c", &o.server_cpus])
            .arg(std::env::current_exe()?)
            .args(["serve", kind, "--workers", "1"])
            .args(unix.then_some("--unix"))
            .args([
                "--hosts",
                &o.hosts.to_string(),
                "--devices",
                &o.devices.to_string(),
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            // fleet-authz's JSON decision log: written, as in production, then discarded.
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut metrics = None;
        let at = loop {
            let line = lines.next().context("server exited before listening")??;
            if let Some(a) = line.strip_prefix("LISTEN ") {
                break a.parse().map_err(anyhow::Error::msg)?;
            }
            if let Some(a) = line.strip_prefix("METRICS ") {
                metrics = Some(a.parse()?);
                continue;
            }
            eprintln!("[{kind}] {line}");
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            at,
            metrics,
        })
    }

    /// The TCP address of a server started with [`start`](Self::start).
    fn addr(&self) -> SocketAddr {
        match &self.at {
            GrpcListen::Tcp(addr) => *addr,
            GrpcListen::Unix(path) => panic!("{} is not a TCP server", path.display()),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Killed, it had no time to remove its socket file.
        if let GrpcListen::Unix(path) = &self.at {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One run's client figures plus the server's CPU use during it.
#[derive(Debug, Clone, Default)]
struct Measured {
    run: RunResult,
    /// Server CPU time over wall time (100% = one core).
    cpu_percent: f64,
    /// The same for this (client) process.
    client_cpu_percent: f64,
}

impl Measured {
    /// Requests answered per second of server CPU time: unlike req/s, it
    /// does not depend on how much of its core the server got from the
    /// other processes on the machine.
    fn per_cpu_second(&self) -> f64 {
        if self.cpu_percent == 0.0 {
            0.0
        } else {
            self.run.rps * 100.0 / self.cpu_percent
        }
    }
}

async fn measure(
    server: &Server,
    o: &Options,
    mode: grpc::Mode,
    requests: &Arc<Vec<Bytes>>,
) -> anyhow::Result<Measured> {
    let (before, me_before) = (sample(server.pid()), sample(std::process::id()));
    let started = Instant::now();
    let run = grpc::run(
        server.addr(),
        requests.clone(),
        mode,
        o.connections,
        o.warmup,
        o.duration,
    )
    .await?;
    let (after, me_after) = (sample(server.pid()), sample(std::process::id()));
    let secs = started.elapsed().as_secs_f64();
    let percent =
        |a: ProcSample, b: ProcSample| (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 / secs;
    Ok(Measured {
        run,
        cpu_percent: percent(before, after),
        client_cpu_percent: percent(me_before, me_after),
    })
}

fn mean(xs: &[Measured], f: impl Fn(&Measured) -> f64) -> f64 {
    xs.iter().map(&f).sum::<f64>() / xs.len().max(1) as f64
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cpu}; {} CPUs online; this process sees {cores}; loadavg at start {}",
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .unwrap_or_default()
            .trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn mem(s: ProcSample) -> String {
    format!(
        "{:.0} MiB (peak {:.0} MiB)",
        s.rss_kb as f64 / 1024.0,
        s.hwm_kb as f64 / 1024.0
    )
}

fn row(out: &mut String, name: &str, m: &Measured) {
    let r = &m.run;
    let _ = writeln!(
        out,
        "| {name} | {:.0} | {} | {} | {} | {} | {} | {}/{}/{} | {:.0}% | {:.0} | {:.0}% |",
        r.rps,
        ms(r.p50_us),
        ms(r.p90_us),
        ms(r.p99_us),
        ms(r.p999_us),
        ms(r.max_us),
        r.allow,
        r.deny,
        r.errors,
        m.cpu_percent,
        m.per_cpu_second(),
        m.client_cpu_percent
    );
}

const HEADER: &str = "| server | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | allow/deny/error | server CPU | req per server CPU-s | client CPU |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// Items 1–3 of issue 6, printed as Markdown.
pub async fn suite(o: Options) -> anyhow::Result<()> {
    let pems = fixture::device_pems(o.devices)?;
    let requests = Arc::new(fixture::encoded_requests(&pems));
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}\n", machine());
    let _ = writeln!(
        out,
        "Pinning: servers `taskset -c {}` and Envoy `taskset -c {SERVER_CPU}`, 1 tokio worker; client `taskset -c {CLIENT_CPU}`, current-thread runtime, {} HTTP/2 connections. Runs: {}s warm-up + {}s recorded, {} round(s), baseline and fleet-authz alternating.\n",
        o.server_cpus,
        o.connections,
        o.warmup.as_secs(),
        o.duration.as_secs(),
        o.rounds
    );
    let baseline = Server::start("baseline", &o)?;
    let fleet = Server::start("fleet", &o)?;
    let fleet_idle = sample(fleet.pid());
    let base_idle = sample(baseline.pid());

    // Item 2a: maximum throughput, closed loop.
    let mode = grpc::Mode::Closed(o.concurrency);
    let (mut b_max, mut f_max) = (Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        eprintln!("max throughput, round {round}");
        b_max.push(measure(&baseline, &o, mode, &requests).await?);
        f_max.push(measure(&fleet, &o, mode, &requests).await?);
    }
    let _ = writeln!(
        out,
        "### Maximum throughput (closed loop, {} callers)\n\n{HEADER}",
        o.concurrency
    );
    for (i, (b, f)) in b_max.iter().zip(&f_max).enumerate() {
        row(&mut out, &format!("baseline r{}", i + 1), b);
        row(&mut out, &format!("fleet-authz r{}", i + 1), f);
    }
    let (b_rps, f_rps) = (mean(&b_max, |m| m.run.rps), mean(&f_max, |m| m.run.rps));
    let (b_eff, f_eff) = (
        mean(&b_max, Measured::per_cpu_second),
        mean(&f_max, Measured::per_cpu_second),
    );
    let _ = writeln!(
        out,
        "\nMean: baseline {b_rps:.0} req/s, fleet-authz {f_rps:.0} req/s, **ratio {}** (target ≥ 0.85). Per server CPU-second: baseline {b_eff:.0}, fleet-authz {f_eff:.0}, **ratio {}**.\n",
        ratio(f_rps, b_rps),
        ratio(f_eff, b_eff)
    );

    if let Some(h2) = h2load_pair(&baseline, &fleet, &o, &pems).await {
        let _ = writeln!(out, "{h2}");
    }

    // Item 2b: latency at half the baseline's maximum rate, open loop.
    let rate = (b_rps / 2.0).round() as u64;
    let (mut b_lat, mut f_lat) = (Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        eprintln!("fixed rate {rate}/s, round {round}");
        b_lat.push(measure(&baseline, &o, grpc::Mode::Rate(rate), &requests).await?);
        f_lat.push(measure(&fleet, &o, grpc::Mode::Rate(rate), &requests).await?);
    }
    let _ = writeln!(
        out,
        "### Latency at {rate} req/s (50% of the baseline's maximum, open loop)\n\n{HEADER}"
    );
    for (i, (b, f)) in b_lat.iter().zip(&f_lat).enumerate() {
        row(&mut out, &format!("baseline r{}", i + 1), b);
        row(&mut out, &format!("fleet-authz r{}", i + 1), f);
    }
    let (b_p99, f_p99) = (
        mean(&b_lat, |m| m.run.p99_us as f64),
        mean(&f_lat, |m| m.run.p99_us as f64),
    );
    let (b_p50, f_p50) = (
        mean(&b_lat, |m| m.run.p50_us as f64),
        mean(&f_lat, |m| m.run.p50_us as f64),
    );
    let _ = writeln!(
        out,
        "\nMean p50: baseline {} ms, fleet-authz {} ms (ratio {}). Mean p99: baseline {} ms, fleet-authz {} ms, **ratio {}** (target ≤ 1.2).\n",
        ms(b_p50 as u64),
        ms(f_p50 as u64),
        ratio(f_p50, b_p50),
        ms(b_p99 as u64),
        ms(f_p99 as u64),
        ratio(f_p99, b_p99)
    );
    let _ = writeln!(
        out,
        "Server memory: fleet-authz with {} hosts {} before load, {} after; baseline {} before, {} after.\n",
        o.hosts,
        mem(fleet_idle),
        mem(sample(fleet.pid())),
        mem(base_idle),
        mem(sample(baseline.pid()))
    );

    if o.envoy {
        let servers = [("baseline", &baseline), ("fleet-authz", &fleet)];
        envoy_runs(&mut out, &o, &pems, &servers).await?;
    }
    drop((baseline, fleet));
    println!("{out}");
    std::fs::write(fixture::work_dir()?.join("report.md"), &out)?;
    Ok(())
}

/// Item 3 alone (`envoy`): the baseline, the baseline with fleet-authz's
/// allow shape, and fleet-authz, then the Envoy runs.
pub async fn envoy_only(o: Options) -> anyhow::Result<()> {
    let pems = fixture::device_pems(o.devices)?;
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}\n", machine());
    let baseline = Server::start("baseline", &o)?;
    let fleet = Server::start("fleet", &o)?;
    let baseline_unix = Server::start_on("baseline", &o, true)?;
    let fleet_unix = Server::start_on("fleet", &o, true)?;
    let shaped = o
        .shaped
        .then(|| Server::start("baseline-shaped", &o))
        .transpose()?;
    let mut servers = vec![
        ("baseline", &baseline),
        ("fleet-authz", &fleet),
        ("baseline, Unix socket", &baseline_unix),
        ("fleet-authz, Unix socket", &fleet_unix),
    ];
    if let Some(shaped) = &shaped {
        servers.push(("baseline, allow-shaped", shaped));
    }
    envoy_runs(&mut out, &o, &pems, &servers).await?;
    out.push_str(&handler_times(&servers).await);
    drop((baseline, fleet, baseline_unix, fleet_unix, shaped));
    println!("{out}");
    std::fs::write(fixture::work_dir()?.join("report-envoy.md"), &out)?;
    Ok(())
}

/// One Envoy round: the client's figures and the CPU each process spent
/// per request sent (warm-up included), in µs.
#[derive(Debug, Clone)]
struct EnvoyRound {
    run: RunResult,
    p99_from_due_us: Option<u64>,
    envoy_cpu_us: f64,
    server_cpu_us: Option<f64>,
    /// The machine's CPU time stolen by the hypervisor during the round.
    steal_percent: f64,
}

/// One h2load round: its latencies, the CPU time stolen meanwhile, and
/// (with ext_authz) how long each of its Checks took as Envoy timed it.
#[derive(Debug, Clone)]
struct H2loadRound {
    hist: Histogram<u64>,
    steal_percent: f64,
    check: Option<Histogram<u64>>,
}

/// Rounds with less CPU time stolen than this (in both the variant's round
/// and the same round with no ext_authz) are the quiet ones. On this VM a
/// round is either near 1% or several times that (sampled 0.4–1.2% and
/// 8–15% in 10 s windows); with several percent stolen, more than 1% of
/// requests overlap a stall, and the p99 measures the stalls.
const QUIET_STEAL_PERCENT: f64 = 2.0;

/// Item 3: Envoy with no ext_authz, then with each of `servers` (the
/// baseline, fleet-authz, …), in alternating rounds (a fresh Envoy each), so
/// the machine's drift and its spikes fall on every variant alike. Each round
/// also reads the CPU time Envoy and the ext_authz server spent, so the added
/// latency can be set against the added work.
async fn envoy_runs(
    out: &mut String,
    o: &Options,
    pems: &[String],
    servers: &[(&str, &Server)],
) -> anyhow::Result<()> {
    let upstream = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let app = upstream.local_addr()?;
    let upstream = tokio::spawn(envoy::serve_upstream(upstream));
    let requests = Arc::new(
        pems.iter()
            .map(|p| fixture::http_request(p))
            .collect::<Vec<_>>(),
    );
    let variants: Vec<(String, Authz, Option<u32>)> =
        std::iter::once(("no ext_authz".to_owned(), Authz::None, None))
            .chain(servers.iter().map(|(name, server)| {
                (
                    format!("ext_authz → {name}"),
                    Authz::At(server.at.clone()),
                    Some(server.pid()),
                )
            }))
            .collect();
    let mut rounds: Vec<Vec<EnvoyRound>> = vec![Vec::new(); variants.len()];
    let mut merged: Vec<Histogram<u64>> = vec![histogram(); variants.len()];
    // h2load's figures per variant and round (open loop only).
    let mut h2load = H2loadRuns::default();
    // Paired: none, server 1, none, server 2, …; otherwise none, then each
    // server, compared with the round's one run with no ext_authz.
    let order: Vec<usize> = if o.paired {
        (1..variants.len()).flat_map(|i| [0, i]).collect()
    } else {
        (0..variants.len()).collect()
    };
    for round in 1..=o.rounds {
        for &i in &order {
            let (name, authz, server) = &variants[i];
            eprintln!("envoy {name}, round {round}");
            let envoy = Envoy::start(&envoy::load_config(authz, app)?, SERVER_CPU).await?;
            if o.paired {
                let h = h2load_round(&envoy, authz, pems, o).await;
                h2load.record(i, h.context("h2load failed")?);
                continue;
            }
            let envoy_pid = envoy.child.id();
            let before = (sample(envoy_pid), server.map(sample));
            let cpu_before = CpuTimes::now();
            let envoy::HttpRun {
                run,
                hist,
                sent,
                p99_from_due_us,
            } = if o.closed {
                envoy::http_closed(envoy.addr, requests.clone(), o.warmup, o.duration).await?
            } else {
                envoy::http_load(
                    envoy.addr,
                    requests.clone(),
                    o.envoy_rps,
                    o.warmup,
                    o.duration,
                )
                .await?
            };
            let per_request = |a: ProcSample, b: ProcSample| {
                // Clock ticks are 10 ms.
                b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 * 10_000.0 / sent.max(1) as f64
            };
            let steal_percent = CpuTimes::now().steal_percent_since(cpu_before);
            let envoy_cpu_us = per_request(before.0, sample(envoy_pid));
            let server_cpu_us = server
                .zip(before.1)
                .map(|(pid, a)| per_request(a, sample(pid)));
            merged[i].add(&hist)?;
            if !o.closed
                && let Some(h) = h2load_round(&envoy, authz, pems, o).await
            {
                h2load.record(i, h);
            }
            rounds[i].push(EnvoyRound {
                run,
                p99_from_due_us,
                envoy_cpu_us,
                server_cpu_us,
                steal_percent,
            });
        }
    }
    upstream.abort();
    if o.paired {
        out.push_str(&h2load.table(servers));
        let _ = writeln!(
            out,
            "\nPaired: h2load alone, each server's run right after the run with no ext_authz it is compared with. Added = variant − that run, {} rounds of {} s each, at {} req/s. Target for fleet-authz: added p99 < 0.3 ms at 1,000 req/s.\n",
            o.rounds,
            o.duration.as_secs(),
            o.envoy_rps
        );
        return Ok(());
    }
    let load = if o.closed {
        "closed loop, one connection".to_owned()
    } else {
        format!("{} req/s, open loop", o.envoy_rps)
    };
    let _ = writeln!(
        out,
        "### Through Envoy ({load}; plain HTTP/1.1, XFCC forwarded)\n"
    );
    let _ = writeln!(
        out,
        "| variant | round | p50 ms | p90 ms | p99 ms | p99.9 ms | p99 from due ms | 200/403/error | Envoy CPU µs/req | server CPU µs/req | stolen CPU % |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for ((name, ..), runs) in variants.iter().zip(&rounds) {
        for (r, round) in runs.iter().enumerate() {
            let EnvoyRound {
                run,
                p99_from_due_us,
                envoy_cpu_us,
                server_cpu_us,
                steal_percent,
            } = round;
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {}/{}/{} | {envoy_cpu_us:.0} | {} | {steal_percent:.1} |",
                r + 1,
                ms(run.p50_us),
                ms(run.p90_us),
                ms(run.p99_us),
                ms(run.p999_us),
                p99_from_due_us.map_or("–".to_owned(), ms),
                run.allow,
                run.deny,
                run.errors,
                server_cpu_us.map_or("–".to_owned(), |c| format!("{c:.0}")),
            );
        }
    }
    // Added latency two ways: from all rounds' requests pooled per variant,
    // and the median over rounds of each round's difference.
    let pooled = |i: usize, q: f64| merged[i].value_at_quantile(q) as f64;
    let median_added = |i: usize, f: fn(&EnvoyRound) -> f64| {
        median(
            rounds[i]
                .iter()
                .zip(&rounds[0])
                .map(|(v, none)| f(v) - f(none))
                .collect(),
        )
    };
    let _ = writeln!(
        out,
        "\n| ext_authz server | pooled p50 / p99 ms | added p50 ms (pooled) | added p99 ms (pooled) | added p50 / p99 ms (median of rounds) | added Envoy CPU µs/req (median) | server CPU µs/req (median) |\n|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        out,
        "| none | {} / {} | – | – | – | – | – |",
        ms(pooled(0, 0.5) as u64),
        ms(pooled(0, 0.99) as u64)
    );
    for (i, (name, _)) in servers.iter().enumerate().map(|(i, s)| (i + 1, s)) {
        let _ = writeln!(
            out,
            "| {name} | {} / {} | {:.3} | {:.3} | {:.3} / {:.3} | {:.0} | {:.0} |",
            ms(pooled(i, 0.5) as u64),
            ms(pooled(i, 0.99) as u64),
            (pooled(i, 0.5) - pooled(0, 0.5)) / 1000.0,
            (pooled(i, 0.99) - pooled(0, 0.99)) / 1000.0,
            median_added(i, |r| r.run.p50_us as f64) / 1000.0,
            median_added(i, |r| r.run.p99_us as f64) / 1000.0,
            median_added(i, |r| r.envoy_cpu_us),
            median(rounds[i].iter().filter_map(|r| r.server_cpu_us).collect()),
        );
    }
    if !h2load.none.is_empty() {
        out.push_str(&h2load.table(servers));
    }
    let _ = writeln!(
        out,
        "\nLatency from when each request was sent; \"p99 from due\" (open loop) adds the client's timer lateness. Added = variant − no ext_authz, {} rounds of {} s each; CPU per request counts the warm-up too. Target for fleet-authz: added p99 < 0.3 ms at 1,000 req/s.\n",
        o.rounds,
        o.duration.as_secs()
    );
    Ok(())
}

/// fleet-authz's own time per Check over the whole run, from its
/// `fleet_authz_check_duration_seconds` histogram: identity, decision and
/// answer, without the gRPC stack. The same scope as OPA-Envoy's published
/// handler latency. The buckets double from 1 µs, so each quantile is
/// given as the bucket it falls in.
async fn handler_times(servers: &[(&str, &Server)]) -> String {
    let mut out = String::from(
        "\nfleet-authz's own time per Check, over every Check of the run (its `fleet_authz_check_duration_seconds` histogram: identity, decision and answer, without the gRPC stack; buckets double from 1 µs, so each quantile is the upper bound of its bucket):\n\n| server | Checks | p50 | p99 | p99.9 | share within 4 µs / 8 µs / 16 µs |\n|---|---|---|---|---|---|\n",
    );
    for (name, server) in servers {
        let Some(addr) = server.metrics else { continue };
        let Some(text) = envoy::get(addr, "/metrics").await else {
            let _ = writeln!(out, "| {name} | /metrics did not answer | | | | |");
            continue;
        };
        // (upper bound in s, cumulative count), in order.
        let buckets: Vec<(f64, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("fleet_authz_check_duration_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, rest) = l.split_once("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, rest.trim().parse().ok()?))
            })
            .collect();
        let total = buckets.last().map_or(0, |b| b.1);
        let within = |q: f64| {
            buckets
                .iter()
                .find(|(_, n)| *n as f64 >= q * total as f64)
                .map_or("–".to_owned(), |(le, _)| format!("≤ {:.0} µs", le * 1e6))
        };
        let share = |bound: f64| {
            buckets
                .iter()
                .find(|(le, _)| (*le - bound).abs() < 1e-9)
                .map_or("–".to_owned(), |(_, n)| {
                    format!("{:.2}%", *n as f64 * 100.0 / total.max(1) as f64)
                })
        };
        let _ = writeln!(
            out,
            "| {name} | {total} | {} | {} | {} | {} / {} / {} |",
            within(0.5),
            within(0.99),
            within(0.999),
            share(4e-6),
            share(8e-6),
            share(16e-6),
        );
    }
    out
}

/// The median (the mean of the middle two for an even count; 0 when empty).
fn median(mut d: Vec<f64>) -> f64 {
    d.sort_by(f64::total_cmp);
    match d.len() {
        0 => 0.0,
        n if n % 2 == 0 => (d[n / 2 - 1] + d[n / 2]) / 2.0,
        n => d[n / 2],
    }
}

/// An h2load run against `envoy` at the options' rate, the share of the
/// machine's CPU time stolen meanwhile, and (when `authz` is a server) each
/// Check as Envoy timed it.
async fn h2load_round(
    envoy: &Envoy,
    authz: &Authz,
    pems: &[String],
    o: &Options,
) -> Option<H2loadRound> {
    let before = CpuTimes::now();
    let (hist, from) =
        envoy::h2load_http(envoy.addr, &pems[0], o.envoy_rps, o.warmup, o.duration).await?;
    let steal_percent = CpuTimes::now().steal_percent_since(before);
    let check = match authz {
        Authz::At(_) => envoy.check_latencies(from, hist.len()).await,
        Authz::None => None,
    };
    Some(H2loadRound {
        check,
        hist,
        steal_percent,
    })
}

/// h2load's runs: those with no ext_authz, and each server's, each with the
/// index of the run with no ext_authz it is compared with (the last before).
#[derive(Debug, Default)]
struct H2loadRuns {
    none: Vec<H2loadRound>,
    servers: Vec<Vec<(usize, H2loadRound)>>,
}

impl H2loadRuns {
    /// Records the run of variant `i` (0: no ext_authz, then the servers).
    fn record(&mut self, i: usize, run: H2loadRound) {
        if i == 0 {
            self.none.push(run);
            return;
        }
        if self.servers.len() < i {
            self.servers.resize_with(i, Vec::new);
        }
        let reference = self.none.len().saturating_sub(1);
        self.servers[i - 1].push((reference, run));
    }

    /// Whether both runs of a pair had little CPU time stolen.
    fn quiet(&self, (reference, run): &(usize, H2loadRound)) -> bool {
        run.steal_percent < QUIET_STEAL_PERCENT
            && self.none[*reference].steal_percent < QUIET_STEAL_PERCENT
    }

    /// The h2load second opinion on item 3: pooled, median-of-rounds and
    /// quiet-rounds added latency per ext_authz server; then each Check as
    /// Envoy timed it in the same runs.
    fn table(&self, servers: &[(&str, &Server)]) -> String {
        let none = merge_all(self.none.iter().map(|r| &r.hist));
        let mut out = format!(
            "\nh2load second opinion (HTTP/1.1, one connection at the same rate, one fixed XFCC device; latency from its per-request log). Quiet rounds: less than {QUIET_STEAL_PERCENT}% of the machine's CPU time stolen by the hypervisor, in the server's run and in the run with no ext_authz it is compared with.\n\n| variant | pooled p50 / p99 ms | added p50 / p99 ms (pooled) | added p50 / p99 ms (median of rounds) | added p50 / p99 ms (median of quiet rounds) | stolen CPU % per run |\n|---|---|---|---|---|---|\n",
        );
        let steal = |runs: &mut dyn Iterator<Item = &H2loadRound>| {
            runs.map(|r| format!("{:.1}", r.steal_percent))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "| no ext_authz | {} / {} | – | – | – | {} |",
            ms(none.value_at_quantile(0.5)),
            ms(none.value_at_quantile(0.99)),
            steal(&mut self.none.iter())
        );
        for ((name, _), runs) in servers.iter().zip(&self.servers) {
            let pooled = merge_all(runs.iter().map(|(_, r)| &r.hist));
            let added = |q: f64, quiet_only: bool| {
                median(
                    runs.iter()
                        .filter(|pair| !quiet_only || self.quiet(pair))
                        .map(|(reference, r)| {
                            let none = &self.none[*reference].hist;
                            r.hist.value_at_quantile(q) as f64 - none.value_at_quantile(q) as f64
                        })
                        .collect(),
                ) / 1000.0
            };
            let quiet = runs.iter().filter(|pair| self.quiet(pair)).count();
            let pooled_added = |q: f64| {
                (pooled.value_at_quantile(q) as f64 - none.value_at_quantile(q) as f64) / 1000.0
            };
            let quiet_added = if quiet == 0 {
                "–".to_owned()
            } else {
                format!("{:.3} / {:.3}", added(0.5, true), added(0.99, true))
            };
            let _ = writeln!(
                out,
                "| {name} | {} / {} | {:.3} / {:.3} | {:.3} / {:.3} | {quiet_added} ({quiet} of {}) | {} |",
                ms(pooled.value_at_quantile(0.5)),
                ms(pooled.value_at_quantile(0.99)),
                pooled_added(0.5),
                pooled_added(0.99),
                added(0.5, false),
                added(0.99, false),
                runs.len(),
                steal(&mut runs.iter().map(|(_, r)| r)),
            );
        }
        out.push_str(&self.check_table(servers));
        out
    }

    /// Each Check of the h2load runs as Envoy's ext_authz filter timed it:
    /// the hop alone, measured per request, with no run to subtract.
    fn check_table(&self, servers: &[(&str, &Server)]) -> String {
        let mut out = String::from(
            "\nEach Check as Envoy timed it, in the same h2load runs (ext_authz filter state `latency_us`, one value per request): from the `CheckRequest` built to the answer received, before Envoy applies it. Envoy's own work to build the request and apply the answer is not in it. Quiet rounds as above.\n\n| ext_authz server | pooled p50 / p90 / p99 / p99.9 ms | p50 / p99 ms (median of rounds) | p99 ms (median of quiet rounds) | Checks timed |\n|---|---|---|---|---|\n",
        );
        for ((name, _), runs) in servers.iter().zip(&self.servers) {
            let timed: Vec<(&Histogram<u64>, bool)> = runs
                .iter()
                .filter_map(|pair| pair.1.check.as_ref().map(|h| (h, self.quiet(pair))))
                .collect();
            if timed.len() < runs.len() {
                let _ = writeln!(
                    out,
                    "| {name} | Envoy's log had {} of {} runs | – | – | – |",
                    timed.len(),
                    runs.len()
                );
                continue;
            }
            let pooled = merge_all(timed.iter().map(|(h, _)| *h));
            let at = |q: f64, quiet_only: bool| {
                median(
                    timed
                        .iter()
                        .filter(|(_, quiet)| !quiet_only || *quiet)
                        .map(|(h, _)| h.value_at_quantile(q) as f64)
                        .collect(),
                ) / 1000.0
            };
            let quiet = timed.iter().filter(|(_, quiet)| *quiet).count();
            let quiet_p99 = if quiet == 0 {
                "–".to_owned()
            } else {
                format!("{:.3} ({quiet} of {})", at(0.99, true), timed.len())
            };
            let _ = writeln!(
                out,
                "| {name} | {} / {} / {} / {} | {:.3} / {:.3} | {quiet_p99} | {} |",
                ms(pooled.value_at_quantile(0.5)),
                ms(pooled.value_at_quantile(0.9)),
                ms(pooled.value_at_quantile(0.99)),
                ms(pooled.value_at_quantile(0.999)),
                at(0.5, false),
                at(0.99, false),
                pooled.len(),
            );
        }
        out
    }
}

/// All of `hists` in one histogram.
fn merge_all<'a>(hists: impl Iterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut all = histogram();
    for h in hists {
        let _ = all.add(h);
    }
    all
}

/// h2load's maximum throughput for both servers (second opinion); `None`
/// when h2load is not installed.
async fn h2load_pair(
    baseline: &Server,
    fleet: &Server,
    o: &Options,
    pems: &[String],
) -> Option<String> {
    let body = fixture::encoded_requests(&pems[..1]).pop()?;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let path = fixture::work_dir().ok()?.join("check.grpc");
    std::fs::write(&path, frame).ok()?;
    let run = |addr: SocketAddr| {
        let out = Command::new("taskset")
            .args([
                "-c",
                CLIENT_CPU,
                "h2load",
                "-c",
                &o.connections.to_string(),
                "-m",
                &(o.concurrency / o.connections.max(1)).to_string(),
            ])
            .args([
                "--warm-up-time",
                &format!("{}s", o.warmup.as_secs()),
                "-D",
                &format!("{}s", o.duration.as_secs()),
            ])
            .args([
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "-d",
            ])
            .arg(&path)
            .arg(format!(
                "http://{addr}/envoy.service.auth.v3.Authorization/Check"
            ))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("finished in"))?
            .to_owned();
        let rps: f64 = line
            .split(", ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let status = text
            .lines()
            .find(|l| l.starts_with("status codes:"))
            .unwrap_or("")
            .to_owned();
        Some((rps, status))
    };
    let (b, f) = (run(baseline.addr())?, run(fleet.addr())?);
    Some(format!(
        "h2load second opinion (same connections and streams, one fixed request): baseline {:.0} req/s, fleet-authz {:.0} req/s, ratio {} ({}; {}).\n",
        b.0,
        f.0,
        ratio(f.0, b.0),
        b.1,
        f.1
    ))
}

/// Item 6: fleet-authz at `fraction` of its maximum for `minutes`, RSS every 10 s.
pub async fn soak(o: Options) -> anyhow::Result<()> {
    let pems = fixture::device_pems(o.devices)?;
    let requests = Arc::new(fixture::encoded_requests(&pems));
    let fleet = Server::start("fleet", &o)?;
    let max = measure(&fleet, &o, grpc::Mode::Closed(o.concurrency), &requests).await?;
    let rate = (max.run.rps * o.fraction).round() as u64;
    println!(
        "Machine: {}\n\nfleet-authz max {:.0} req/s; soak at {rate} req/s ({:.0}%) for {} min; RSS sampled every 10 s.\n",
        machine(),
        max.run.rps,
        o.fraction * 100.0,
        o.minutes
    );
    println!("| t (s) | VmRSS MiB | VmHWM MiB |\n|---|---|---|");
    let pid = fleet.pid();
    let sampler = tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let s = sample(pid);
            println!(
                "| {} | {:.1} | {:.1} |",
                start.elapsed().as_secs(),
                s.rss_kb as f64 / 1024.0,
                s.hwm_kb as f64 / 1024.0
            );
        }
    });
    let mut windows = Vec::new();
    for _ in 0..o.minutes {
        let run = grpc::run(
            fleet.addr(),
            requests.clone(),
            grpc::Mode::Rate(rate),
            o.connections,
            Duration::ZERO,
            Duration::from_secs(60),
        )
        .await?;
        windows.push(run);
    }
    sampler.abort();
    println!(
        "\n| minute | req/s | p50 ms | p99 ms | p99.9 ms | max ms | allow/deny/error |\n|---|---|---|---|---|---|---|"
    );
    for (i, r) in windows.iter().enumerate() {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {}/{}/{} |",
            i + 1,
            r.rps,
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            ms(r.max_us),
            r.allow,
            r.deny,
            r.errors
        );
    }
    Ok(())
}
