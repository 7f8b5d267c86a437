//! `pingpong`: what one wake-up round trip between two processes costs on
//! this machine, with both on one CPU and across two. A Check is at least
//! one such round trip (Envoy to the ext_authz server and back), so this
//! is the floor under the hop, and it shows why the servers sit on
//! Envoy's CPU.
//!
//! This process pins itself to CPU 0 and starts a copy of itself
//! (`pingpong-echo`, pinned with `taskset`) that answers each byte it reads
//! on a Unix socket with one byte.

use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Context;

use crate::{commands::pin_self, report::histogram};

const ROUND_TRIPS: u64 = 100_000;

/// Round trips to an echo on CPU 0, then on CPU 1; prints a table.
pub fn run() -> anyhow::Result<()> {
    pin_self("0")?;
    let dir = tempfile::tempdir()?;
    println!(
        "One-byte round trips over a Unix socket, {ROUND_TRIPS} each; this process on CPU 0.\n\n| echo on | mean µs | p50 µs | p99 µs | p99.9 µs |\n|---|---|---|---|---|"
    );
    for cpu in ["0", "1"] {
        let path = dir.path().join(format!("echo-{cpu}.sock"));
        let listener = UnixListener::bind(&path)?;
        let mut child = Command::new("taskset")
            .args(["-c", cpu])
            .arg(std::env::current_exe()?)
            .arg("pingpong-echo")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .context("taskset not found")?;
        let (mut stream, _) = listener.accept()?;
        let mut hist = histogram();
        let mut byte = [0u8; 1];
        // The first tenth warms up and is not recorded.
        let warmup = ROUND_TRIPS / 10;
        for i in 0..warmup + ROUND_TRIPS {
            let sent = Instant::now();
            stream.write_all(&byte)?;
            stream.read_exact(&mut byte)?;
            if i >= warmup {
                hist.saturating_record((sent.elapsed().as_nanos() as u64).max(1));
            }
        }
        drop(stream);
        child.wait()?;
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
        println!(
            "| CPU {cpu} | {:.1} | {:.1} | {:.1} | {:.1} |",
            hist.mean() / 1e3,
            us(0.5),
            us(0.99),
            us(0.999)
        );
    }
    Ok(())
}

/// The echo: one byte back for each byte read, until the socket closes.
pub fn echo(path: &str) -> anyhow::Result<()> {
    let mut stream = UnixStream::connect(path)?;
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 {
        stream.write_all(&byte)?;
    }
    Ok(())
}
