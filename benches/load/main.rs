//! Load generator for fleet-authz (project issue 6), measured against the
//! physical limit in the same run. Not a criterion bench: run it by hand.
//!
//! ```text
//! cargo bench --bench load -- suite [--duration 10] [--rounds 2] [--no-envoy]
//! cargo bench --bench load -- envoy [--rounds 6] [--duration 10] [--closed | --paired] [--shaped]
//!     (item 3 alone: baseline and fleet-authz over TCP and a Unix socket;
//!     --shaped adds the allow-shaped baseline, --paired runs h2load alone)
//! cargo bench --bench load -- soak [--minutes 30] [--fraction 0.5] [--hosts 100000]
//! cargo bench --bench load -- spikes [--hosts 100000]
//! cargo bench --bench load -- serve fleet|baseline|baseline-shaped [--hosts 100000] [--unix]
//! cargo bench --bench load -- client --addr HOST:PORT (--concurrency N | --rate RPS)
//! cargo bench --bench load -- pingpong
//!     (one wake-up round trip between two processes, on one CPU and across two)
//! ```
//!
//! `suite`, `envoy` and `soak` (one file each under `commands/`) pin
//! themselves (the load client, and the upstream app of the Envoy runs) to
//! CPU 1 and start each server under test as a child process of this same
//! binary pinned to CPU 0, with one tokio worker: the split is the same for
//! fleet-authz and the baseline. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark tool")]

#[path = "../../tests/common/certs.rs"]
#[allow(dead_code, reason = "shared with the tests, which use the rest")]
mod certs;
mod commands;
mod envoy;
#[path = "../../tests/common/fake_fleet/mod.rs"]
#[allow(
    dead_code,
    clippy::result_large_err,
    reason = "test code: the soak uses part of the fake, whose handlers return axum responses"
)]
mod fake_fleet;
mod fixture;
mod grpc;
mod http;
mod pingpong;
mod report;
mod servers;
#[path = "../support/synthetic.rs"]
mod synthetic;
#[path = "../../tests/common/tools.rs"]
#[allow(dead_code, reason = "shared with the tests, which use the rest")]
mod tools;

use std::{sync::Arc, time::Duration};

/// The allocator `fleet-authz` ships with (src/main.rs), here for both
/// servers under test and the client alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, bail};

/// Value of `--name` in `args`, if given.
pub fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Parsed `--name`, or `default`.
pub fn opt_or<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match opt(args, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}: cannot parse `{v}`")),
    }
}

/// A server's runtime: `workers` tokio workers (the same for both servers).
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()?)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`; it means nothing here.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(command) = args.first().cloned() else {
        eprintln!(
            "usage: cargo bench --bench load -- suite|envoy|soak|spikes|serve|client|pingpong … (see benches/load/main.rs)"
        );
        return Ok(());
    };
    let devices: usize = opt_or(&args, "--devices", 1000)?;
    match command.as_str() {
        "serve" => {
            let workers = opt_or(&args, "--workers", 1)?;
            let hosts = opt_or(&args, "--hosts", 100_000)?;
            let unix = args.iter().any(|a| a == "--unix");
            match args.get(1).map(String::as_str) {
                Some("fleet") => {
                    runtime(workers)?.block_on(servers::serve_fleet(hosts, devices, unix))
                }
                Some("fleet-synced") => {
                    let url = opt(&args, "--fleet-url").context("--fleet-url is required")?;
                    let dir = opt(&args, "--dir").context("--dir is required")?;
                    runtime(workers)?.block_on(servers::serve_fleet_synced(&url, dir.as_ref()))
                }
                Some("baseline") => {
                    runtime(workers)?.block_on(servers::serve_baseline(false, unix))
                }
                Some("baseline-shaped") => {
                    runtime(workers)?.block_on(servers::serve_baseline(true, unix))
                }
                other => bail!(
                    "serve: expected fleet, fleet-synced, baseline or baseline-shaped, got {other:?}"
                ),
            }
        }
        "client" => {
            let addr = opt(&args, "--addr")
                .context("client: --addr is required")?
                .parse()?;
            let mode = match (opt(&args, "--concurrency"), opt(&args, "--rate")) {
                (Some(c), None) => grpc::Mode::Closed(c.parse()?),
                (None, Some(r)) => grpc::Mode::Rate(r.parse()?),
                _ => bail!("client: give --concurrency or --rate"),
            };
            let requests = Arc::new(fixture::encoded_requests(&fixture::device_pems(devices)?));
            let result = single_thread()?.block_on(grpc::run(
                addr,
                requests,
                mode,
                opt_or(&args, "--connections", 4)?,
                Duration::from_secs(opt_or(&args, "--warmup", 2)?),
                Duration::from_secs(opt_or(&args, "--duration", 10)?),
            ))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        "suite" | "soak" | "spikes" | "envoy" => {
            commands::pin_self("1")?;
            let options = commands::Options::parse(&args)?;
            let rt = single_thread()?;
            match command.as_str() {
                "suite" => rt.block_on(commands::suite::suite(options)),
                "envoy" => rt.block_on(commands::envoy::envoy_only(options)),
                "spikes" => rt.block_on(commands::spikes::spikes(options)),
                _ => rt.block_on(commands::soak::soak(options)),
            }
        }
        "pingpong" => pingpong::run(),
        "pingpong-echo" => pingpong::echo(args.get(1).context("pingpong-echo: socket path")?),
        other => bail!("unknown command `{other}`"),
    }
}

/// The client's runtime: one thread, on the client's one core.
fn single_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
