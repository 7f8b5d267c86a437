//! `soak`: item 6 of issue 6. fleet-authz alone, at a fixed share of its
//! measured maximum for minutes on end, with its memory sampled as it runs.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Options, Server, machine, measure};
use crate::{
    fixture, grpc,
    report::{ms, sample},
};

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
