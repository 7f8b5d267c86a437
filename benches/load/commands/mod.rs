//! The three measurement commands, one file each: `suite` (items 1–3 of
//! issue 6), `envoy` (item 3 alone) and `soak` (item 6). What they share is
//! here: the options, the servers under test as child processes pinned to
//! CPU 0 (the client runs here, on CPU 1), one measured gRPC run, and the
//! report's table rows. Each prints Markdown; `suite` and `envoy` also write
//! it under `target/load/`.

pub mod envoy;
mod h2load;
pub mod soak;
pub mod spikes;
pub mod suite;

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use prost::bytes::Bytes;

use crate::{
    grpc,
    report::{ProcSample, RunResult, ms, sample},
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
            minutes: opt_or(args, "--minutes", 30)?,
            fraction: opt_or(args, "--fraction", 0.5)?,
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
        Self::start_with(kind, o, unix.then_some("--unix"))
    }

    /// Starts a server of `kind` with `extra` arguments.
    fn start_with<'a>(
        kind: &str,
        o: &Options,
        extra: impl IntoIterator<Item = &'a str>,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new("taskset")
            .args(["-c", &o.server_cpus])
            .arg(std::env::current_exe()?)
            .args(["serve", kind, "--workers", "1"])
            .args(extra)
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

/// The median (the mean of the middle two for an even count; 0 when empty).
fn median(mut d: Vec<f64>) -> f64 {
    d.sort_by(f64::total_cmp);
    match d.len() {
        0 => 0.0,
        n if n % 2 == 0 => (d[n / 2 - 1] + d[n / 2]) / 2.0,
        n => d[n / 2],
    }
}
