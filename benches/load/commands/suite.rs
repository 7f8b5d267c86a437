//! `suite`: items 1–3 of issue 6. fleet-authz against a tonic server that
//! does nothing (the baseline): maximum throughput in a closed loop, then
//! latency in an open loop at half the baseline's maximum, then (unless
//! `--no-envoy`) the Envoy runs of the `envoy` command.

use std::{fmt::Write as _, net::SocketAddr, process::Command, sync::Arc};

use prost::bytes::Bytes;

use super::{
    CLIENT_CPU, HEADER, Measured, Options, SERVER_CPU, Server, envoy::envoy_runs, machine, mean,
    measure, mem, row,
};
use crate::{
    fixture, grpc,
    report::{ms, ratio, sample},
};

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

    let b_rps = max_throughput(&mut out, &o, &baseline, &fleet, &requests).await?;
    if let Some(h2) = h2load_pair(&baseline, &fleet, &o, &pems).await {
        let _ = writeln!(out, "{h2}");
    }
    latency_at_half(&mut out, &o, &baseline, &fleet, &requests, b_rps).await?;
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

/// Item 2a: maximum throughput, closed loop. Returns the baseline's mean
/// req/s.
async fn max_throughput(
    out: &mut String,
    o: &Options,
    baseline: &Server,
    fleet: &Server,
    requests: &Arc<Vec<Bytes>>,
) -> anyhow::Result<f64> {
    let mode = grpc::Mode::Closed(o.concurrency);
    let (mut b_max, mut f_max) = (Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        eprintln!("max throughput, round {round}");
        b_max.push(measure(baseline, o, mode, requests).await?);
        f_max.push(measure(fleet, o, mode, requests).await?);
    }
    let _ = writeln!(
        out,
        "### Maximum throughput (closed loop, {} callers)\n\n{HEADER}",
        o.concurrency
    );
    for (i, (b, f)) in b_max.iter().zip(&f_max).enumerate() {
        row(out, &format!("baseline r{}", i + 1), b);
        row(out, &format!("fleet-authz r{}", i + 1), f);
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
    Ok(b_rps)
}

/// Item 2b: latency at half the baseline's maximum rate (`b_rps`), open loop.
async fn latency_at_half(
    out: &mut String,
    o: &Options,
    baseline: &Server,
    fleet: &Server,
    requests: &Arc<Vec<Bytes>>,
    b_rps: f64,
) -> anyhow::Result<()> {
    let rate = (b_rps / 2.0).round() as u64;
    let (mut b_lat, mut f_lat) = (Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        eprintln!("fixed rate {rate}/s, round {round}");
        b_lat.push(measure(baseline, o, grpc::Mode::Rate(rate), requests).await?);
        f_lat.push(measure(fleet, o, grpc::Mode::Rate(rate), requests).await?);
    }
    let _ = writeln!(
        out,
        "### Latency at {rate} req/s (50% of the baseline's maximum, open loop)\n\n{HEADER}"
    );
    for (i, (b, f)) in b_lat.iter().zip(&f_lat).enumerate() {
        row(out, &format!("baseline r{}", i + 1), b);
        row(out, &format!("fleet-authz r{}", i + 1), f);
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
    Ok(())
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
