//! `envoy`: item 3 of issue 6 alone, and the Envoy runs `suite` ends with.
//! Envoy with no ext_authz, then with each server under test, in
//! alternating rounds (a fresh Envoy each), so the machine's drift and its
//! spikes fall on every variant alike. Each round also reads the CPU time
//! Envoy and the ext_authz server spent, so the added latency can be set
//! against the added work.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use anyhow::Context;
use hdrhistogram::Histogram;
use prost::bytes::Bytes;

use super::{
    Options, SERVER_CPU, Server,
    h2load::{H2loadRuns, h2load_round},
    machine, median,
};
use crate::{
    envoy::{self, Authz, Envoy},
    fixture,
    http::{self, HttpRun},
    report::{CpuTimes, ProcSample, RunResult, histogram, ms, sample},
    tools,
};

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

/// One variant: its name, whom Envoy asks, and that server's process.
type Variant = (String, Authz, Option<u32>);

/// What every round measured, per variant (0: no ext_authz, then the
/// servers): the client's rounds, all its latencies pooled, and h2load's.
struct EnvoyRuns {
    rounds: Vec<Vec<EnvoyRound>>,
    merged: Vec<Histogram<u64>>,
    h2load: H2loadRuns,
}

/// Item 3: Envoy with no ext_authz, then with each of `servers` (the
/// baseline, fleet-authz, …), in alternating rounds; the report goes to
/// `out`.
pub(super) async fn envoy_runs(
    out: &mut String,
    o: &Options,
    pems: &[String],
    servers: &[(&str, &Server)],
) -> anyhow::Result<()> {
    let upstream = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let app = upstream.local_addr()?;
    let upstream = tokio::spawn(http::serve_upstream(upstream));
    let requests = Arc::new(
        pems.iter()
            .map(|p| fixture::http_request(p))
            .collect::<Vec<_>>(),
    );
    let variants: Vec<Variant> = std::iter::once(("no ext_authz".to_owned(), Authz::None, None))
        .chain(servers.iter().map(|(name, server)| {
            (
                format!("ext_authz → {name}"),
                Authz::At(server.at.clone()),
                Some(server.pid()),
            )
        }))
        .collect();
    let runs = run_rounds(o, pems, &variants, app, &requests).await?;
    upstream.abort();
    if o.paired {
        out.push_str(&runs.h2load.table(servers));
        let _ = writeln!(
            out,
            "\nPaired: h2load alone, each server's run right after the run with no ext_authz it is compared with. Added = variant − that run, {} rounds of {} s each, at {} req/s. Target for fleet-authz: added p99 < 0.3 ms at 1,000 req/s.\n",
            o.rounds,
            o.duration.as_secs(),
            o.envoy_rps
        );
        return Ok(());
    }
    write_rounds(out, o, &variants, &runs.rounds);
    write_added(out, servers, &runs);
    if runs.h2load.ran() {
        out.push_str(&runs.h2load.table(servers));
    }
    let _ = writeln!(
        out,
        "\nLatency from when each request was sent; \"p99 from due\" (open loop) adds the client's timer lateness. Added = variant − no ext_authz, {} rounds of {} s each; CPU per request counts the warm-up too. Target for fleet-authz: added p99 < 0.3 ms at 1,000 req/s.\n",
        o.rounds,
        o.duration.as_secs()
    );
    Ok(())
}

/// Every round of every variant, a fresh Envoy each. Paired: no ext_authz,
/// server 1, no ext_authz, server 2, … by h2load alone; otherwise no
/// ext_authz, then each server, compared with the round's one run with no
/// ext_authz.
async fn run_rounds(
    o: &Options,
    pems: &[String],
    variants: &[Variant],
    app: SocketAddr,
    requests: &Arc<Vec<Bytes>>,
) -> anyhow::Result<EnvoyRuns> {
    let mut runs = EnvoyRuns {
        rounds: vec![Vec::new(); variants.len()],
        merged: vec![histogram(); variants.len()],
        // h2load's figures per variant and round (open loop only).
        h2load: H2loadRuns::default(),
    };
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
                runs.h2load.record(i, h.context("h2load failed")?);
                continue;
            }
            let (measured, hist) = client_round(&envoy, *server, o, requests).await?;
            runs.merged[i].add(&hist)?;
            if !o.closed
                && let Some(h) = h2load_round(&envoy, authz, pems, o).await
            {
                runs.h2load.record(i, h);
            }
            runs.rounds[i].push(measured);
        }
    }
    Ok(runs)
}

/// One round of the bench's own client through `envoy`, and the CPU time
/// Envoy and the ext_authz `server` (a process id) spent per request.
async fn client_round(
    envoy: &Envoy,
    server: Option<u32>,
    o: &Options,
    requests: &Arc<Vec<Bytes>>,
) -> anyhow::Result<(EnvoyRound, Histogram<u64>)> {
    let envoy_pid = envoy.child.id();
    let before = (sample(envoy_pid), server.map(sample));
    let cpu_before = CpuTimes::now();
    let HttpRun {
        run,
        hist,
        sent,
        p99_from_due_us,
    } = if o.closed {
        http::http_closed(envoy.addr, requests.clone(), o.warmup, o.duration).await?
    } else {
        http::http_load(
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
    let measured = EnvoyRound {
        run,
        p99_from_due_us,
        envoy_cpu_us,
        server_cpu_us,
        steal_percent,
    };
    Ok((measured, hist))
}

/// The per-round table of the bench's own client.
fn write_rounds(out: &mut String, o: &Options, variants: &[Variant], rounds: &[Vec<EnvoyRound>]) {
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
    for ((name, ..), runs) in variants.iter().zip(rounds) {
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
}

/// Added latency two ways: from all rounds' requests pooled per variant,
/// and the median over rounds of each round's difference.
fn write_added(out: &mut String, servers: &[(&str, &Server)], runs: &EnvoyRuns) {
    let (rounds, merged) = (&runs.rounds, &runs.merged);
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
        let Some(text) = tools::http_get(addr, "/metrics").await else {
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
