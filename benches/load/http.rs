//! HTTP/1.1 through Envoy: the minimal upstream app Envoy forwards to, the
//! bench's own clients (closed loop on one connection, or open loop at a
//! fixed rate), and h2load as a second opinion.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use hdrhistogram::Histogram;
use prost::bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};

use crate::report::{Counts, RunResult, histogram, wait_until_due};

/// The upstream app: answers every HTTP/1.1 request `200 ok`, keep-alive.
pub async fn serve_upstream(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(8192);
            loop {
                if read_head(&mut stream, &mut buf).await.is_none() {
                    return;
                }
                let ok =
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Reads one request or response head (and its `content-length` body) into
/// `buf`; returns the status code for a response, 0 for a request.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .ok()?
        .to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = head
        .strip_prefix("http/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Some(status)
}

/// Counts an answer by its HTTP status (`None`: no answer): 200 is an allow,
/// 403 a deny, anything else an error.
fn count(counts: &Counts, status: Option<u16>) {
    let c = match status {
        Some(200) => &counts.allow,
        Some(403) => &counts.deny,
        _ => &counts.errors,
    };
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// What one Envoy run measured.
pub struct HttpRun {
    /// Latency from when each request was sent.
    pub run: RunResult,
    pub hist: Histogram<u64>,
    /// Requests sent, warm-up included.
    pub sent: u64,
    /// Open loop only: p99 counted from when each request was due, which
    /// adds the client's timer lateness (tokio's timer has 1 ms resolution).
    pub p99_from_due_us: Option<u64>,
}

/// Closed loop on one keep-alive connection: each request is sent as soon
/// as the previous answer is read, for `warmup + duration`. With no idle
/// time between requests, the latency is what the path costs when no CPU
/// has gone to sleep: the floor under the open-loop figures.
pub async fn http_closed(
    addr: SocketAddr,
    requests: Arc<Vec<Bytes>>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<HttpRun> {
    let mut hist = histogram();
    let counts = Counts::default();
    let record_from = Instant::now() + warmup;
    let end = record_from + duration;
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut i = 0;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        stream.write_all(&requests[i % requests.len()]).await?;
        let status = read_head(&mut stream, &mut buf)
            .await
            .context("envoy closed the connection")?;
        i += 1;
        if sent >= record_from {
            hist.record(sent.elapsed().as_micros() as u64)?;
            count(&counts, Some(status));
        }
    }
    Ok(HttpRun {
        run: RunResult::new(&hist, &counts, duration),
        hist,
        sent: i as u64,
        p99_from_due_us: None,
    })
}

/// Sends `requests` (round robin) to `addr` at `rps` for `warmup + duration`;
/// each request takes an idle keep-alive connection or opens one. Latency is
/// counted from when the request was sent (taking a connection included),
/// and, for comparison, from when it was due. Well below capacity no request
/// waits for another, so the first is the path's latency without the
/// client's timer lateness, which is the same for every variant but adds up
/// to 1 ms of noise to each.
pub async fn http_load(
    addr: SocketAddr,
    requests: Arc<Vec<Bytes>>,
    rps: u64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<HttpRun> {
    let idle: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let hist = Arc::new(Mutex::new((histogram(), histogram())));
    let counts = Arc::new(Counts::default());
    let start = Instant::now() + Duration::from_millis(10);
    let record_from = start + warmup;
    let end = record_from + duration;
    let interval = Duration::from_secs_f64(1.0 / rps.max(1) as f64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    while let Some(due) = wait_until_due(start, interval, i, end).await {
        let (idle, hist, counts) = (idle.clone(), hist.clone(), counts.clone());
        let request = requests[i as usize % requests.len()].clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let pooled = idle.lock().ok().and_then(|mut v| v.pop());
            let stream = match pooled {
                Some(s) => Some(s),
                None => TcpStream::connect(addr).await.ok().inspect(|s| {
                    let _ = s.set_nodelay(true);
                }),
            };
            let mut status = None;
            if let Some(mut s) = stream {
                let mut buf = Vec::with_capacity(4096);
                if s.write_all(&request).await.is_ok() {
                    status = read_head(&mut s, &mut buf).await;
                }
                if status.is_some()
                    && let Ok(mut v) = idle.lock()
                {
                    v.push(s);
                }
            }
            if due >= record_from {
                if let Ok(mut h) = hist.lock() {
                    let _ = h.0.record(sent.elapsed().as_micros() as u64);
                    let _ = h.1.record(due.elapsed().as_micros() as u64);
                }
                count(&counts, status);
            }
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
    let (hist, from_due) = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| (histogram(), histogram()));
    Ok(HttpRun {
        run: RunResult::new(&hist, &counts, duration),
        hist,
        sent: i,
        p99_from_due_us: Some(from_due.value_at_quantile(0.99)),
    })
}

/// Second opinion from h2load (nghttp2) on the same Envoy: HTTP/1.1 on one
/// connection at `rps` (a request waits for the previous answer: over
/// several connections h2load's pacing sends them in bursts, which Envoy's
/// one worker then queues), one fixed XFCC header (device `pem`), for
/// `warmup + duration`. Latency comes from h2load's per-request
/// log (`--log-file`); requests that started in the warm-up are dropped.
/// Also returns when the recorded requests began (µs since the epoch).
/// `None` when h2load is not installed or fails. Asynchronous: the upstream
/// app answering Envoy runs on this same runtime.
pub async fn h2load_http(
    addr: SocketAddr,
    pem: &str,
    rps: u64,
    warmup: Duration,
    duration: Duration,
) -> Option<(Histogram<u64>, u64)> {
    let dir = tempfile::tempdir().ok()?;
    let log = dir.path().join("h2load.log");
    let total = rps * (warmup + duration).as_secs();
    let mut command = tokio::process::Command::new("h2load");
    command.args(["--h1", "-c", "1", "--rps", &rps.to_string()]);
    command
        .args(["-n", &total.to_string(), "--log-file"])
        .arg(&log);
    for (k, v) in crate::fixture::EXTRA_HEADERS {
        command.args(["-H", &format!("{k}: {v}")]);
    }
    command.args([
        "-H",
        &format!(
            "x-forwarded-client-cert: Cert=\"{}\"",
            fleet_authz::authz::request::url_encode_pem(pem)
        ),
    ]);
    let status = command
        .arg(format!("http://{addr}/reports/q3"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .ok()?;
    if !status.success() {
        return None;
    }
    // Columns: start (µs since the epoch), status, µs until the response ended.
    let text = std::fs::read_to_string(&log).ok()?;
    let rows: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let start = cols.next()?.parse().ok()?;
            let micros = cols.nth(1)?.parse().ok()?;
            Some((start, micros))
        })
        .collect();
    let first = rows.iter().map(|r| r.0).min()?;
    let record_from = first + warmup.as_micros() as u64;
    let mut hist = histogram();
    for (start, micros) in rows {
        if start >= record_from {
            hist.record(micros.max(1)).ok()?;
        }
    }
    Some((hist, record_from))
}
